# %% [markdown]
# # Save checkpoints with ModelCheckpoint and resume a killed run
# Keep the best and last MNIST checkpoints with several callbacks, and resume exactly.
#
# ## What it teaches
# `ModelCheckpoint` in depth (several callbacks, `filename` templates, `save_top_k`, `save_last`, `save_weights_only`,
# `every_n_epochs`), `trainer.save_checkpoint`, an exact resume (`ckpt_path="last"` and the RNG states), atomic saves.
# ## How to run
# ```bash
# python check_point_save.py              # 3 epochs: best 2 by loss, best 2 by accuracy, every 2 epochs, last
# python check_point_save.py --resume     # after a crash, Ctrl-C or SIGTERM (which print this command)
# python check_point_save.py --overwrite --save_top_k 3 --every_n_epochs 1   # replace the earlier run's files
# python check_point_load.py --pick best_acc                                 # then load and test one of them
# ```
# ## What it writes (under --output_dir, default outputs/check_point_save)
# ```text
# checkpoints/epoch=NN-valid_{loss,acc}=X.ckpt   the --save_top_k best epochs by each metric
# checkpoints/epoch=NN.ckpt, last.ckpt, manual.ckpt   one per --every_n_epochs; the latest (--resume); save_checkpoint
# csv_logs/, tb_logs/, history.csv, loss.png, acc.png   the loggers; the per-epoch table of the whole run
# ```

# %% Parameters tags=["parameters"]
ARGS = []  # a notebook run's flags, as on the command line (e.g. ["--epochs", "1"]); a shell run reads its own

# %% Imports
import argparse
import contextlib
import errno
import io
import logging
import math
import os
import re
import shlex
import shutil
import struct
import sys
import threading
import warnings
from pathlib import Path

import matplotlib

# Copied from Basic_usage_of_lightning.py
IN_NOTEBOOK = "get_ipython" in globals()  # Jupyter, VS Code cells, Colab: IPython defines it
if not IN_NOTEBOOK:
    matplotlib.use("Agg")  # a shell run draws into files; no display is needed
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import Accuracy
from torchvision.datasets import MNIST

# Noise: the workers hint (the data are tensors in memory), a pytree deprecation inside Lightning, "checkpoint
# directory not empty" (--resume wants it; a fresh run refuses it itself), notes on limits of 1.0, a cloud-logger tip.
for noise in (".*does not have many workers.*", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
              ".*Checkpoint directory .* exists and is not empty.*"):
    warnings.filterwarnings("ignore", noise)
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: not any(note in record.getMessage() for note in ("=1.0)` was configured", "Tip: For seamless")))

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
HISTORY_COLUMNS = ("train_loss", "valid_loss", "train_acc", "valid_acc")
RUN_SETTINGS = ("epochs", "batch_size", "lr", "seed", "val_size", "limit_train_batches")  # a resume must keep these


# %% [markdown]
# ## Model
# A plain `nn.Module`, no Lightning in it: two conv blocks and two linear layers, 1x28x28 image in, 10 logits out.

# %% Model
# Copied from Basic_usage_of_lightning.py
class MNISTConvNet(nn.Module):
    def __init__(self, hidden_units: int = 128, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x14x14
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # 32x7x7
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, hidden_units), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_units, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # logits: cross_entropy applies log_softmax itself


# %% [markdown]
# ## LightningModule
# The training recipe around `MNISTConvNet`: steps, metrics, optimizer and data.

# %% LightningModule
class MNISTClassifier(pl.LightningModule):
    def __init__(self, data_dir: str = "data", batch_size: int = 128, eval_batch_size: int = 128,
                 lr: float = 0.01, hidden_units: int = 128, dropout: float = 0.25, val_size: int = 5000,
                 num_workers: int = 0, seed: int = 42):
        super().__init__()
        self.save_hyperparameters()  # plain types only: the checkpoint then loads with weights_only=True
        self.model = MNISTConvNet(hidden_units, dropout)
        # One metric object per stage, so their running states never mix.
        self.train_acc, self.valid_acc, self.test_acc = (Accuracy(task="multiclass", num_classes=10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("valid_loss", F.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)
        self.valid_acc.update(logits, labels)

    def on_validation_epoch_end(self):
        self.log("valid_acc", self.valid_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("test_loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.test_acc.update(logits, labels)

    def on_test_epoch_end(self):
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        # Its length follows --epochs and --limit_train_batches: why a resume must keep those flags.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str):
        if stage in ("fit", "validate"):
            self.train_set, self.valid_set = mnist_split(self.hparams.data_dir, self.hparams.val_size, self.hparams.seed)
        if stage in ("test", "predict"):
            self.test_set = mnist_tensors(self.hparams.data_dir, train=False)

    def train_dataloader(self):
        # The order comes from the global generator, which ResumableState saves: a resume shuffles alike.
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.valid_set, self.hparams.eval_batch_size)

    def test_dataloader(self):
        return self._loader(self.test_set, self.hparams.eval_batch_size)

    def _loader(self, dataset, batch_size, shuffle=False):
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)


# %% [markdown]
# ## Data
# The whole split as normalized float tensors, decoded once, and a train/validation split fixed by the seed.

# %% Data
# Copied from Basic_usage_of_lightning.py
def mnist_tensors(data_dir: str, train: bool) -> TensorDataset:
    """The whole split, normalized once: far cheaper than ToTensor + Normalize per sample per epoch."""
    dataset = MNIST(data_dir, train=train, download=False)
    images = (dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)).unsqueeze(1)
    return TensorDataset(images, dataset.targets)


# Copied from Basic_usage_of_lightning.py
def mnist_split(data_dir: str, val_size: int, seed: int) -> list:
    full = mnist_tensors(data_dir, train=True)
    generator = torch.Generator().manual_seed(seed)  # same split every run, in every process
    return random_split(full, [len(full) - val_size, val_size], generator=generator)


# %% [markdown]
# ## Checkpointing
# Three `ModelCheckpoint` callbacks, each with its own rule for what to keep, and what an exact resume needs.

# %% Checkpointing
def checkpoint_callbacks(ckpt_dir: Path, args) -> dict:
    # No version counter: a same-named file can only be an interrupted try at this epoch; replace it, no "-v1".
    common = dict(dirpath=ckpt_dir, save_weights_only=args.save_weights_only, enable_version_counter=False)
    return {  # Lightning runs them in this order; the last one writes last.ckpt after the others saved
        # No monitor: a snapshot every N epochs; save_top_k=-1 keeps them all.
        "periodic": ModelCheckpoint(filename="{epoch:02d}", every_n_epochs=args.every_n_epochs, save_top_k=-1, **common),
        # filename: "{epoch:02d}-{valid_acc:.4f}" becomes "epoch=03-valid_acc=0.9912.ckpt".
        "best_acc": ModelCheckpoint(filename="{epoch:02d}-{valid_acc:.4f}", monitor="valid_acc",
                                    mode="max", save_top_k=args.save_top_k, **common),
        # save_last: also write last.ckpt, in every epoch where this (top-k) callback runs.
        "best_loss": ModelCheckpoint(filename="{epoch:02d}-{valid_loss:.4f}", monitor="valid_loss",
                                     mode="min", save_top_k=args.save_top_k, save_last=True, **common),
    }


class ResumableState(pl.Callback):
    """What an exact resume needs beyond Lightning's state: the random generators (dropout and shuffling
    draw from them), the per-epoch history (a killed run's CSV log stops at its last flush) and the flags."""

    def __init__(self, settings: dict):
        self.settings, self.history = settings, []

    def on_train_epoch_end(self, trainer, pl_module):
        # Runs before ModelCheckpoint's hook, so this epoch's checkpoint holds this row of epoch means.
        metrics = trainer.callback_metrics
        row = {name: float(metrics[name]) for name in HISTORY_COLUMNS if name in metrics}
        self.history.append({"epoch": trainer.current_epoch, **row})

    def state_dict(self):
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
        return {"settings": self.settings, "history": self.history, "torch_rng": torch.get_rng_state(), "cuda_rng": cuda}

    def load_state_dict(self, state_dict):
        self.history = state_dict["history"]
        torch.set_rng_state(state_dict["torch_rng"])
        if state_dict["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda_rng"])


# %% [markdown]
# ## Main
# What the command line runs (a notebook: with the parameters cell's `ARGS`); below it, flags, checks and helpers.

# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    out, ckpt_dir = Path(args.output_dir), Path(args.output_dir, "checkpoints")
    before = file_times(out)  # to tell this run's outputs from an earlier run's
    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                            lr=args.lr, val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
    if args.named_modules or args.named_parameters:
        print_structure(model, args.named_modules, args.named_parameters)
        return 0
    callbacks = checkpoint_callbacks(ckpt_dir, args)
    state = ResumableState({name: getattr(args, name) for name in RUN_SETTINGS})
    with exit_on_error("cannot build the Trainer from these flags"):
        trainer = pl.Trainer(accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
                             num_nodes=args.num_nodes, precision=args.precision, max_epochs=args.epochs,
                             logger=[CSVLogger(out, name="csv_logs"), TensorBoardLogger(out, name="tb_logs")],
                             callbacks=[state, *callbacks.values()], plugins=[AtomicCheckpointIO()], deterministic=True,
                             fast_dev_run=args.fast_dev_run, limit_test_batches=args.limit_test_batches,
                             limit_train_batches=args.limit_train_batches, limit_val_batches=args.limit_val_batches)
    check_checkpoint_folder(ckpt_dir, args, state.settings, trainer.is_global_zero, model)
    check_run_fits_the_data(args, prepare_mnist(args.data_dir))

    # ckpt_path="last": last.ckpt in the callbacks' dirpath; every state comes back, and the next epoch follows.
    with exit_if_interrupted(trainer, resume_hint(argv, callbacks["best_loss"])), exit_if_write_fails(out):
        with earlier_run_kept_until_replaced(ckpt_dir, args.overwrite and trainer.is_global_zero):
            trainer.fit(model, ckpt_path=args.resume, weights_only=True)
    if not args.fast_dev_run:  # fast_dev_run turns the callbacks off; keep the folder as it was
        # A manual save: this moment, this path, no ranking or clean-up. Under DDP all ranks call it, rank 0 writes.
        trainer.save_checkpoint(ckpt_dir / "manual.ckpt", weights_only=args.save_weights_only)
    # Read what the callbacks kept now: test(ckpt_path=...) restores their states as of the best epoch.
    best, best_loss = callbacks["best_acc"].best_model_path, callbacks["best_loss"].best_model_path
    history = pd.DataFrame(state.history).set_index("epoch")
    table = checkpoint_table(ckpt_dir, callbacks, args.every_n_epochs) if trainer.is_global_zero else ""
    with exit_if_write_fails(out):
        test_metrics = trainer.test(model, ckpt_path=best or None, verbose=False, weights_only=True)[0]

    if trainer.is_global_zero:  # under DDP every rank runs main(); only one reports and writes
        print("\n" + history.to_string(float_format="{:.4f}".format))
        print(f"\ntest accuracy: {test_metrics['test_acc']:.4f}   ({Path(best).name or 'weights in memory'})")
        if not args.fast_dev_run:
            write_atomically(out / "history.csv", history.to_csv)
            plot_history(history, out)
            print(f"\nCheckpoints in {ckpt_dir.resolve()}:\n{table}\nbest by valid_loss: {Path(best_loss).name}\n"
                  f"best by valid_acc:  {Path(best).name}\n"
                  f"load one with:      python check_point_load.py --ckpt_dir {ckpt_dir} --pick best_acc")
        print_outputs(out, before)
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # else DDP may abort (134)
        torch.distributed.destroy_process_group()
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter, description=(
        "Keep the best and last MNIST checkpoints with several callbacks, and resume exactly."))
    parser.error = die  # every bad flag value: one line, exit 2
    add = parser.add_argument_group("data and outputs").add_argument
    add("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
        help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    add("--output_dir", "--output-dir", type=output_folder, default="outputs/check_point_save", help="where it writes")
    add("--val_size", "--val-size", type=number(int, min=1), default=5000, help="training images held out for validation")
    add("--num_workers", "--num-workers", type=number(int, min=0), default=0, help="DataLoader worker processes")
    add = parser.add_argument_group("training").add_argument
    add("--batch_size", "--batch-size", type=number(int, min=1), default=128, metavar="N", help="training batch size")
    add("--eval_batch_size", "--eval-batch-size", "--test_batch_size", "--test-batch-size", type=number(int, min=1),
        metavar="N", help="validation and test batch size (default: --batch_size)")
    add("--epochs", type=number(int, min=1), default=3, metavar="N", help="training epochs")
    add("--lr", type=number(float, above=0), default=0.01, help="peak learning rate of the one-cycle schedule")
    add("--seed", type=number(int, min=0, max=2**32 - 1), default=42, help="seeds weights, split and shuffling")
    add = parser.add_argument_group("checkpoints").add_argument
    add("--save_top_k", "--save-top-k", type=top_k, default=2, metavar="K", help="best files per metric; -1: all")
    add("--save_weights_only", "--save-weights-only", action="store_true", help="weights only: 1/3 the size, no resume")
    add("--every_n_epochs", "--every-n-epochs", type=number(int, min=1), default=2, metavar="N",
        help="also keep a snapshot every N epochs")
    add("--resume", nargs="?", const="last", metavar="PATH", help="continue from checkpoints/last.ckpt, or from PATH")
    add("--overwrite", action="store_true", help="replace an earlier run's checkpoints (kept until this run saved its own)")
    add = parser.add_argument_group("hardware (passed to pl.Trainer)").add_argument
    add("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    add("--devices", default="auto", help="how many devices, or which: 2, 0,1, auto")
    add("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ...")
    add("--num_nodes", "--num-nodes", type=number(int, min=1), default=1, help="machines for multi-node DDP")
    add("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, 64-true")
    add = parser.add_argument_group("debugging (passed to pl.Trainer)").add_argument
    add("--fast_dev_run", "--fast-dev-run", nargs="?", type=number(int, min=0), const=1, default=0, metavar="N",
        help="run N batches of each stage (1 when given alone), write no checkpoints")
    for stage in ("train", "val", "test"):
        add(f"--limit_{stage}_batches", f"--limit-{stage}-batches", type=batch_count, default=1.0, metavar="N|F",
            help=f"{stage} batches per epoch: a count, or a fraction")
    add = parser.add_argument_group("model inspection").add_argument
    add("--named_modules", "--named-modules", action="store_true", help="print the modules and exit")
    add("--named_parameters", "--named-parameters", action="store_true", help="print the parameters and exit")
    add = parser.add_argument_group("flags of the original Lightning 1.x tutorial, still accepted").add_argument
    add("--no-cuda", "--no_cuda", action=OriginalTutorialFlag, nargs=0, dest="accelerator", const="cpu",
        note="it is --accelerator cpu now")
    add("--test", action=OriginalTutorialFlag, nargs=0, note="no effect: training always ends with a test of the best "
        "checkpoint; to test a saved checkpoint use check_point_load.py")
    add("--gamma", action=OriginalTutorialFlag, type=float, note="no effect: the LR follows a one-cycle schedule")
    add("--log-interval", "--log_interval", action=OriginalTutorialFlag, type=number(int, min=1), metavar="N",
        note="no effect: metrics are logged once per epoch; the progress bar shows the running loss")
    add("--save_model", "--save-model", action="store_true", help="no effect here: every run saves its checkpoints")
    args = parser.parse_args(argv)
    if args.save_model:
        print("note: --save_model (from the original tutorial): no effect, this script always saves checkpoints; "
              "check_point_load.py --save_model writes the plain state_dict", file=sys.stderr)
    if args.resume and args.overwrite:
        die("--resume continues the earlier run and --overwrite replaces it; pass one of them")
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    return args


def top_k(text: str) -> int:
    if (value := int(text)) == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (keep all) or at least 1, got {value} (0 writes no last.ckpt)")
    return value

# Copied from Basic_usage_of_lightning.py
def number(kind: type, min=None, max=None, above=None, below=None):
    """A flag type: the text as kind (int or float) in the given range, else one line."""
    bounds = {"at least": min, "above": above, "at most": max, "below": below}
    allowed = f"between {min} and {max}" if None not in (min, max) else " and ".join(
        f"{word} {bound}" for word, bound in bounds.items() if bound is not None)
    def parse(text: str):
        value = kind(text)
        if not (math.isfinite(value) and (min is None or value >= min) and (max is None or value <= max)
                and (above is None or value > above) and (below is None or value < below)):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value
    parse.__name__, parse.allowed = kind.__name__, allowed  # argparse says "invalid int value"
    return parse


# Copied from Basic_usage_of_lightning.py
def batch_count(text: str):
    """A count of batches (an int, at least 1) or a fraction of them (a float in (0, 1])."""
    return number(float, above=0, max=1)(text) if any(c in text for c in ".eE") else number(int, min=1)(text)


# Copied from Basic_usage_of_lightning.py
def output_folder(text: str) -> str:
    """A folder the run can write to: not a file, and under a writable folder when new."""
    existing = next(p for p in [Path(text), *Path(text).parents] if p.exists() or p == Path(p.anchor or "."))
    if existing.exists() and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder; pick another --output_dir")
    if not os.access(existing if existing.exists() else ".", os.W_OK):
        raise argparse.ArgumentTypeError(f"{existing} is not writable; pick another --output_dir")
    return text


# Copied from Basic_usage_of_lightning.py
class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help adds each flag's default, except a missing one (None) or a switch's (False)."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


# Copied from Basic_usage_of_lightning.py
class OriginalTutorialFlag(argparse.Action):
    """A flag of the 1.x tutorial: prints its note; its value goes to successor, or dest gets const, or nowhere."""

    def __init__(self, option_strings, dest, note, successor=None, **kwargs):
        kwargs.update(default=argparse.SUPPRESS, help=note)
        kwargs.setdefault("metavar", None if kwargs.get("nargs") == 0 else "VALUE")  # not the suppressed dest
        super().__init__(option_strings, successor or (dest if "const" in kwargs else argparse.SUPPRESS), **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} (from the original tutorial): {self.help}", file=sys.stderr)
        if self.dest != argparse.SUPPRESS:
            setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


# %% Helpers
# Copied from Basic_usage_of_lightning.py
def file_times(folder: Path) -> dict:
    """{path: modification time} of every file under folder: what an earlier run left there."""
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


# Copied from Basic_usage_of_lightning.py
def print_outputs(out: Path, before: dict) -> None:
    """What out holds, marking what this run did not write (before: file_times(out) at its start)."""
    print(f"\nOutputs in {out.resolve()}:")
    for path in sorted(out.glob("*")):
        files = [path] if path.is_file() else [file for file in path.rglob("*") if file.is_file()]
        earlier = [file for file in files if before.get(file) == file.stat().st_mtime_ns]
        note = " (earlier run)" if files and earlier == files else " (partly an earlier run's)" if earlier else ""
        print(f"  {path.name}{'/' if path.is_dir() else ''}{note}")


def check_checkpoint_folder(ckpt_dir: Path, args, settings: dict, rank_zero: bool, model: nn.Module) -> None:
    """Before any work: a writable folder, a file --resume can continue exactly, no earlier run to mix with."""
    if ckpt_dir.exists() and not (ckpt_dir.is_dir() and os.access(ckpt_dir, os.W_OK)):
        die(f"{ckpt_dir} is not a folder this run can write to; pick another --output_dir")
    if rank_zero:  # under DDP the other ranks start once rank 0 has set the earlier run aside
        settle_earlier_run(ckpt_dir)  # left by a killed --overwrite run
    if args.resume:
        path = ckpt_dir / "last.ckpt" if args.resume == "last" else Path(args.resume)
        if not path.is_file():
            die(f"--resume: no {path} to continue from; train without --resume first")
        check_resumable(path, settings, ckpt_dir, model)
    elif not args.overwrite and (previous := sorted(ckpt_dir.glob("*.ckpt"))):
        die(f"{ckpt_dir} already holds {len(previous)} checkpoints of an earlier run; continue it "
            f"with --resume, replace them with --overwrite, or pick another --output_dir")


def check_resumable(path: Path, settings: dict, ckpt_dir: Path, model: nn.Module) -> None:
    """Refuse, before any change, a file this run cannot continue exactly or that names files outside ckpt_dir."""
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
        held = f"keys {list(checkpoint)[:4]}" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        die(f"{path} is not a Lightning checkpoint (it holds {held}); resume from a last.ckpt that check_point_save.py wrote")
    if "optimizer_states" not in checkpoint:
        die(f"{path} was saved with save_weights_only=True: it holds the weights but no optimizer, LR-scheduler or "
            f"callback state, so training cannot resume from it. Load it for inference with check_point_load.py, "
            f"or train again without --save_weights_only")
    callbacks = checkpoint.get("callbacks")
    state = callbacks.get(ResumableState.__qualname__) if isinstance(callbacks, dict) else None
    if not isinstance(state, dict):
        die(f"{path} was not written by check_point_save.py (it has no ResumableState); resume from this script's own last.ckpt")

    def problem() -> str:  # the first thing in the checkpoint that this script would not have saved
        folder = ckpt_dir.resolve()
        for name, saved in callbacks.items():
            if name.startswith("ModelCheckpoint"):
                if not isinstance(saved, dict) or not isinstance(saved.get("best_k_models", {}), dict):
                    return f"the state of {name.split('{')[0]} is not a table"
                paths = [saved.get(key) for key in ("best_model_path", "kth_best_model_path", "last_model_path")]
                moved = saved.get("dirpath") != str(folder)  # then Lightning restores only best_model_path, deletes none
                for file in filter(None, [] if moved else [*paths, *saved.get("best_k_models", {})]):
                    if not (isinstance(file, str) and Path(file).resolve().parent == folder and not Path(file).is_symlink()
                            and re.fullmatch(r"(last|epoch=\d+(-valid_(acc|loss)=[\w.-]+)?)\.ckpt", Path(file).name)):
                        return f"a ModelCheckpoint names {file!r}, not a checkpoint of this run in {ckpt_dir}"
        if not isinstance(state.get("settings"), dict) or not (isinstance(rows := state.get("history"), list) and all(
                isinstance(row, dict) and all(isinstance(v, (int, float)) for v in row.values()) for row in rows)):
            return "its run settings or per-epoch history are not tables"
        generators = [state.get("torch_rng"), *([state["cuda_rng"]] if state.get("cuda_rng") is not None else [])]
        if not all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8 and g.dim() == 1 for g in generators) \
                or generators[0].shape != torch.get_rng_state().shape:
            return "a random-generator state is not the byte tensor torch saves"
        if not isinstance(checkpoint.get("loops"), dict) or "fit_loop" not in checkpoint["loops"]:
            return "it has no training-loop state (epoch and step counters)"
        schedulers, optimizers = checkpoint.get("lr_schedulers"), checkpoint["optimizer_states"]
        if not all(isinstance(x, list) and len(x) == 1 and isinstance(x[0], dict) for x in (schedulers, optimizers)):
            return "its optimizer or LR-scheduler state is not one table"
        weights, expected = checkpoint.get("state_dict"), model.state_dict()
        if not isinstance(weights, dict) or weights.keys() != expected.keys() or not all(
                torch.is_tensor(w) and not w.is_meta and w.shape == expected[k].shape for k, w in weights.items()):
            return "its weights are not those of MNISTClassifier (names, shapes, or meta tensors)"
        parameters, per_parameter = list(model.parameters()), optimizers[0].get("state", {})
        if not isinstance(per_parameter, dict) or not all(
                isinstance(i, int) and 0 <= i < len(parameters) and isinstance(moments, dict)
                and all(isinstance(t, torch.Tensor) and not t.is_meta and (t.dim() == 0 or t.shape == parameters[i].shape)
                        for t in moments.values()) for i, moments in per_parameter.items()):
            return "its optimizer state does not fit MNISTClassifier's parameters"
        return ""

    if reason := problem():
        die(f"{path} cannot be resumed: {reason}. Resume from a last.ckpt that check_point_save.py wrote, or start "
            f"over with --overwrite (nothing was changed)")
    if changed := [f"--{name} {state['settings'].get(name)} (now {value})" for name, value in settings.items()
                   if state["settings"].get(name) != value]:
        die(f"{path} was trained with {', '.join(changed)}; resume with the same flags, or start over with "
            f"--overwrite (a one-cycle schedule cannot be stretched)")


EARLIER_RUN = ".earlier_run"  # hidden, and not *.ckpt: no loader and no ModelCheckpoint looks inside


@contextlib.contextmanager
def earlier_run_kept_until_replaced(ckpt_dir: Path, overwrite: bool):
    """--overwrite losing nothing: the earlier run's checkpoints wait aside until this run has a last.ckpt."""
    if overwrite and any(ckpt_dir.glob("*.ckpt")):
        (aside := ckpt_dir / EARLIER_RUN).mkdir(exist_ok=True)
        for path in [*ckpt_dir.glob("*.ckpt"), *ckpt_dir.glob(".*.partial")]:  # .partial: left by a killed write
            path.rename(aside / path.name)
    try:
        yield
    finally:
        settle_earlier_run(ckpt_dir)


def settle_earlier_run(ckpt_dir: Path) -> None:
    """Drop the set-aside checkpoints once this run has a last.ckpt of its own; else put them back."""
    if (aside := ckpt_dir / EARLIER_RUN).is_dir() and not (ckpt_dir / "last.ckpt").is_file():
        for path in ckpt_dir.glob("*.ckpt"):  # the first files of a run that stopped: nothing to resume
            path.unlink()
        for path in aside.iterdir():
            path.rename(ckpt_dir / path.name)
    shutil.rmtree(aside, ignore_errors=True)  # absent when there was no earlier run


def resume_hint(argv, last: ModelCheckpoint):
    """For exit_if_interrupted: the command that goes on with this run, once it has stopped."""
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    script = sys.argv[0] if Path(sys.argv[0]).name == "check_point_save.py" else "check_point_save.py"  # a notebook

    def hint() -> str:
        if not last.last_model_path:  # no last.ckpt of this run (an --overwrite got the earlier one back)
            return f"; it saved no checkpoint yet, so run it again: {shlex.join(['python', script, *argv])}"
        kept, path_next = [], False
        for token in argv:  # the same flags without --overwrite and --resume [PATH], or their prefixes (--res)
            flag = token.split("=", 1)[0]
            dropped = len(flag) > 2 and ("--overwrite".startswith(flag) or "--resume".startswith(flag))
            if not dropped and not (path_next and not token.startswith("-")):
                kept.append(token)
            path_next = dropped and "--resume".startswith(flag) and "=" not in token
        return f"; resume with: {shlex.join(['python', script, *kept, '--resume'])}"
    return hint


def checkpoint_table(ckpt_dir: Path, callbacks: dict, every_n_epochs: int) -> str:
    """Each .ckpt: which rule kept it (none: an interrupted try's epoch), its monitored value and its rank."""
    kept = {"last.ckpt": ("save_last", "", ""), "manual.ckpt": ("trainer.save_checkpoint", "", "")}
    for name in ("best_loss", "best_acc"):
        callback = callbacks[name]
        ranked = sorted(callback.best_k_models.items(), key=lambda item: float(item[1]), reverse=callback.mode == "max")
        for rank, (path, score) in enumerate(ranked, start=1):
            kept[Path(path).name] = (name, f"{callback.monitor}={float(score):.4f}", str(rank))
    lines = [f"  {'file':34s} {'kept by':24s} {'value':18s} {'rank':4s} {'size':>8s}"]
    for path in sorted(ckpt_dir.glob("*.ckpt")):
        periodic = re.fullmatch(r"epoch=\d+\.ckpt", path.name) and f"every_n_epochs={every_n_epochs}"
        kept_by, value, rank = kept.get(path.name, (periodic or "(not tracked by this run)", "", ""))
        lines.append(f"  {path.name:34s} {kept_by:24s} {value:18s} {rank:4s} {path.stat().st_size / 1e3:>5.0f} kB")
    return "\n".join(lines)


# Copied from check_point_load.py
def load_checkpoint_file(path: Path, weights_only: bool = True, unsafe_fix: str = "re-save it with plain types"):
    """torch.load on the CPU, or one line saying what is wrong; weights_only=False can run any code the file names."""
    if path.stat().st_size == 0:
        die(f"{path} is empty (0 bytes), probably left by an interrupted copy; use another checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*Detected pickle protocol.*")  # random bytes can look like one
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # torch.load raises many types for bad files; all mean "unreadable"
        if unsafe := re.search(r"GLOBAL (\S+)", str(error)):
            die(f"{path} holds a Python object ({unsafe.group(1)}) that weights_only=True refuses, "
                f"since unpickling it can run any code; {unsafe_fix}")
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":  # torch.save writes a zip archive: this one is cut or corrupt
                die(f"{path} is truncated or damaged (an incomplete zip archive); use another checkpoint")
        die(f"{path} is not a PyTorch checkpoint ({error.__class__.__name__})")


# Copied from Basic_usage_of_lightning.py
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# Copied from Basic_usage_of_lightning.py
def prepare_mnist(data_dir: str, flag: str = "--data_dir") -> int:
    """MNIST in data_dir/MNIST/raw (downloaded if missing), checked; returns the training image count."""
    raw = Path(data_dir, "MNIST", "raw")
    if not all((raw / name).is_file() for name in MNIST_FILES):
        new_folders = [folder for folder in (raw, *raw.parents) if not folder.exists()]  # deepest first
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # not torchvision's every mirror: our one line
                MNIST(data_dir, train=False, download=True)
                MNIST(data_dir, train=True, download=True)
        except (RuntimeError, OSError) as error:
            for folder in new_folders:  # leave no empty MNIST/raw behind
                with contextlib.suppress(OSError):
                    folder.rmdir()
            die(f"MNIST is not in {raw} and could not be downloaded ({str(error).splitlines()[0].rstrip(':')}). "
                f"Copy the four raw files ({', '.join(MNIST_FILES)}) there, or point {flag} or PATH_DATASETS "
                f"at a folder that holds MNIST/raw.")
    train_images, train_labels, test_images, test_labels = (idx_length(raw / name) for name in MNIST_FILES)
    for images, labels, split in ((train_images, train_labels, "train"), (test_images, test_labels, "t10k")):
        if images != labels:
            die(f"{raw} holds {images} {split} images but {labels} {split} labels; copy the four raw "
                f"MNIST files again from one source")
    return train_images


# Copied from Basic_usage_of_lightning.py
def idx_length(path: Path) -> int:
    """The item count in an IDX file's header, after checking the file is as long as it says."""
    with open(path, "rb") as file:
        header = file.read(4)
        rank = header[3] if len(header) == 4 else 0
        shape = file.read(4 * rank)
    size = path.stat().st_size
    if rank == 0 or len(shape) < 4 * rank or size != 4 + 4 * rank + math.prod(struct.unpack(f">{rank}I", shape)):
        die(f"{path} is damaged or cut short ({size} bytes); copy the four raw MNIST files again")
    return struct.unpack(">I", shape[:4])[0]


def check_run_fits_the_data(args, train_images: int) -> None:
    """Flags each valid alone that misfit the data or each other: one line now, not a crash deep in torch later."""
    if args.val_size >= train_images:
        die(f"--val_size {args.val_size} leaves no training images ({train_images} in {args.data_dir}); "
            f"use a smaller --val_size")
    if args.lr > 1:  # AdamW moves each weight by about the learning rate per step
        die(f"--lr {args.lr} is too large: past 1, each step moves the weights by more than their own size and "
            f"training diverges or overflows; the default is 0.01")
    test_images = idx_length(Path(args.data_dir, "MNIST", "raw", MNIST_FILES[2]))
    if max(args.batch_size, args.eval_batch_size) > max(train_images, test_images):
        die(f"a batch of {max(args.batch_size, args.eval_batch_size)} is more than all {train_images} training "
            f"images; pass a --batch_size (and --eval_batch_size) of at most {train_images}")
    stages = {"train": (train_images - args.val_size, args.batch_size), "val": (args.val_size, args.eval_batch_size),
              "test": (test_images, args.eval_batch_size)}
    for stage, (images, batch_size) in stages.items():  # each node gets its share of the batches
        batches, limit = math.ceil(images / batch_size / args.num_nodes), getattr(args, f"limit_{stage}_batches")
        if isinstance(limit, float) and limit * batches < 1 and not args.fast_dev_run:
            die(f"--limit_{stage}_batches {limit} of {batches} {stage} batches is less than one batch; "
                f"pass a larger fraction, or a number of batches such as 1")


# Copied from Basic_usage_of_lightning.py
@contextlib.contextmanager
def exit_on_error(what: str):
    """An error from a library that our flags caused: one line, exit 2, not a traceback."""
    try:
        yield
    except Exception as error:
        die(f"{what}: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}")


# Copied from Basic_usage_of_lightning.py
@contextlib.contextmanager
def exit_if_interrupted(trainer: pl.Trainer, resume_hint=""):
    """Ctrl-C or SIGTERM during fit: one line ending in resume_hint (text or function), exit 130 / 143."""
    try:
        yield
    except SystemExit as stop:
        sigterm = isinstance(stop, SIGTERMException)
        if not trainer.interrupted or not (sigterm or stop.code == 1):  # die() mid-fit said why itself
            raise
        hint = resume_hint() if callable(resume_hint) else resume_hint
        print(f"\ninterrupted by {'SIGTERM' if sigterm else 'Ctrl-C'} in epoch {trainer.current_epoch} "
              f"(0-based) of {trainer.max_epochs}: nothing was tested{hint}", file=sys.stderr)
        sys.exit(143 if sigterm else 130)


# Copied from Basic_usage_of_lightning.py
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through save_atomically (a full disk: one line, old file kept)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_atomically(checkpoint, Path(path))


# Copied from Basic_usage_of_lightning.py
def save_atomically(obj, path: Path) -> None:
    write_atomically(path, lambda file: torch.save(obj, file))


# Copied from Basic_usage_of_lightning.py
def write_atomically(path: Path, write) -> None:
    """write(file) into memory, then to a hidden file renamed onto path: the old file or the new, never half."""
    partial = path.with_name(f".{path.name}.partial")  # not *.ckpt: no loader will pick it up
    try:
        write(buffer := io.BytesIO())
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException as error:
        with contextlib.suppress(OSError):  # a read-only disk refuses even this
            partial.unlink(missing_ok=True)
        if not write_failure(error):
            raise
        die(f"cannot write {path}: {write_failure(error)} (any earlier {path.name} is untouched)")


# Copied from Basic_usage_of_lightning.py
def write_failure(error: BaseException) -> str:
    """Why the disk refused a write and the fix, if error (or one behind it, as MLflow wraps it) says so; else ""."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            return f"{error.strerror}; free some space or pick another --output_dir"
        if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"{error.strerror}; pick an --output_dir you can write to"
        error = error.__cause__ or error.__context__
    return ""


# Copied from Basic_usage_of_lightning.py
@contextlib.contextmanager
def exit_if_write_fails(out: Path):
    """A log, event file or plot that a library writes under out fails (a full disk): one line, exit 2."""
    previous_hook = threading.excepthook
    # TensorBoard's writer thread: no traceback from it (it raises the same error here at the next flush).
    threading.excepthook = lambda hook: write_failure(hook.exc_value) or previous_hook(hook)
    try:
        yield
    except Exception as error:
        if not write_failure(error):
            raise
        die(f"cannot write under {out}: {write_failure(error)}")
    threading.excepthook = previous_hook  # kept on a failure: the thread may report it after die()


# Copied from Basic_usage_of_lightning.py
def plot_history(history: pd.DataFrame, out: Path, title: str = "MNIST", xlabel: str = "epoch") -> None:
    """loss.png and acc.png: train and valid curves per epoch."""
    for kind, label in (("loss", "cross-entropy loss"), ("acc", "accuracy")):
        columns = [c for c in (f"train_{kind}", f"valid_{kind}") if c in history]
        ax = history[columns].plot(marker="o", grid=True, title=f"{title}: {label} per epoch", xlabel=xlabel, ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        write_atomically(out / f"{kind}.png", lambda file: ax.figure.savefig(file, format="png", dpi=100, bbox_inches="tight"))
        if IN_NOTEBOOK:
            plt.show()  # inline under the cell as well
        plt.close(ax.figure)


# Copied from Basic_usage_of_lightning.py
def print_structure(model: nn.Module, modules: bool, parameters: bool) -> None:
    for name, module in model.named_modules() if modules else []:
        print(f"{name or '(LightningModule)':28s} {module.__class__.__name__}")
    for name, parameter in model.named_parameters() if parameters else []:
        print(f"{name:28s} {str(tuple(parameter.shape)):16s} {parameter.numel():>8d}")
    if parameters:
        print(f"total trainable parameters: {sum(p.numel() for p in model.parameters()):,}")


# Copied from Basic_usage_of_lightning.py
def die(message: str) -> None:
    """One line on stderr and exit code 2: bad input is the user's to fix, not a crash."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    if IN_NOTEBOOK:  # the flags of the parameters cell; bad input prints its one line, the kernel lives on
        with contextlib.suppress(SystemExit):
            main(ARGS)
    else:
        sys.exit(main())
