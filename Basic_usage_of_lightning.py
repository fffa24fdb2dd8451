# %% [markdown]
# # Basic usage of PyTorch Lightning
# Train, validate, test and export an MNIST CNN with the Lightning 2.x Trainer.
#
# ## What it teaches
# A plain `nn.Module` in a `LightningModule`: a `*_step` hook per stage, epoch-level work in `on_*_epoch_end`, an LR
# scheduler, data in the module's hooks or a `LightningDataModule`; the `Trainer` flags for devices, precision, debugging.
# ## How to run
# ```bash
# python Basic_usage_of_lightning.py                                 # 3 epochs, about 99.1% test accuracy
# python Basic_usage_of_lightning.py --data_dir /path/to/datasets    # MNIST already on disk (MNIST/raw), offline
# python Basic_usage_of_lightning.py --fast_dev_run                  # one batch per stage, a smoke test
# python Basic_usage_of_lightning.py --save_model --export onnx      # more in docs/basics.md
# ```
# ## What it writes (under --output_dir, default outputs/Basic_usage_of_lightning)
# ```text
# csv_logs/, tb_logs/             every logged value, as CSV and for TensorBoard (a version_N/ per run)
# checkpoints/best.ckpt           the epoch with the best valid_acc, used for the test
# history.csv, loss.png, acc.png  the per-epoch table and its curves
# mnist_classifier.pt|.onnx|.pt2  with --save_model / --export: the network's state_dict, its exports
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
import socket
import struct
import sys
import threading
import warnings
from pathlib import Path

import matplotlib
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
from torchmetrics import Accuracy, MeanMetric
from torchvision.datasets import MNIST

# Notes that teach nothing here: add workers (the data are in memory), a torch 2.14 deprecation inside Lightning,
# a full checkpoint folder (a rerun replaces best.ckpt), a limit left at 1.0, a tip to install a cloud logger.
for noise in ("does not have many workers", "isinstance\\(treespec, LeafSpec\\)` is deprecated",
              "Checkpoint directory .* exists and is not empty"):
    warnings.filterwarnings("ignore", f".*{noise}.*")
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: not any(note in record.getMessage() for note in ("=1.0)` was configured", "Tip: For seamless")))

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MODEL_FILE = "mnist_classifier"


# %% [markdown]
# ## Model
# A plain `nn.Module`, no Lightning in it: two conv blocks, two linear layers; 1x28x28 image in, 10 logits out.

# %% Model
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
# The training recipe around `MNISTConvNet`: `forward`, one `*_step` hook per stage, epoch-level work in
# `on_*_epoch_end`, an optimizer with an LR scheduler, and the data (`setup` + `*_dataloader`).

# %% LightningModule
class MNISTClassifier(pl.LightningModule):
    def __init__(self, data_dir: str = "data", batch_size: int = 128, eval_batch_size: int = 128,
                 lr: float = 0.01, hidden_units: int = 128, dropout: float = 0.25, val_size: int = 5000,
                 num_workers: int = 0, seed: int = 42, compile_mode: str = None):
        super().__init__()
        self.save_hyperparameters(ignore="compile_mode")  # plain types only: checkpoints load with weights_only=True
        self.compile_mode = compile_mode
        self.model = MNISTConvNet(hidden_units, dropout)
        self.train_loss = MeanMetric()  # the epoch's mean loss, weighted by batch size
        self.train_acc = Accuracy(task="multiclass", num_classes=10)  # one metric per stage: their states never mix
        self.valid_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc_per_digit = Accuracy(task="multiclass", num_classes=10, average=None)
        self.example_input_array = torch.zeros(2, 1, 28, 28)  # summary and exports (torch.export fixes a batch of 1)

    def configure_model(self):
        if self.compile_mode:  # --compile: the network, in place, in each process (docs/basics.md says why)
            self.model.compile(mode=self.compile_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # inference: images in, logits out; the *_step hooks call it
        return self.model(x)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        # Accumulate only: a self.log per step was most of Lightning's cost here (benchmarks/step_overhead.py).
        self.train_loss.update(loss.detach(), weight=len(labels))
        self.train_acc.update(logits, labels)
        return loss  # Lightning calls backward(), optimizer.step() and zero_grad() with it

    def on_train_epoch_end(self):  # a logged Metric object: Lightning computes it across processes, then resets it
        self.log("train_loss", self.train_loss, prog_bar=True)
        self.log("train_acc", self.train_acc)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("valid_loss", F.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)
        self.valid_acc.update(logits, labels)

    def on_validation_epoch_end(self):  # the 2.x home of 1.x's validation_epoch_end(outputs)
        self.log("valid_acc", self.valid_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("test_loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.test_acc.update(logits, labels)
        self.test_acc_per_digit.update(logits, labels)

    def on_test_epoch_end(self):  # replaces 1.x test_epoch_end
        self.log("test_acc", self.test_acc)
        self.per_digit_accuracy = self.test_acc_per_digit.compute().tolist()  # a vector, which self.log cannot take
        self.test_acc_per_digit.reset()

    def predict_step(self, batch, batch_idx):
        images, labels = batch
        return self(images).argmax(dim=1), labels

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(  # one cycle over the whole run, whose length the Trainer knows
            optimizer, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str):  # on every process (each DDP rank), before the stage starts
        if stage in ("fit", "validate"):
            self.train_set, self.valid_set = mnist_split(self.hparams.data_dir, self.hparams.val_size, self.hparams.seed)
        if stage in ("test", "predict"):
            self.test_set = mnist_tensors(self.hparams.data_dir, train=False)

    def train_dataloader(self):
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.valid_set, self.hparams.eval_batch_size)

    def test_dataloader(self):
        return self._loader(self.test_set, self.hparams.eval_batch_size)

    predict_dataloader = test_dataloader  # predictions for the test images

    def _loader(self, dataset, batch_size, shuffle=False):
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)


# %% [markdown]
# ## Data
# MNIST as normalized tensors in memory, the train/validation split (the same for the same seed), and
# `MNISTClassifier`'s data hooks in a `LightningDataModule` (`--datamodule`): the standard home for data once
# several models or scripts share it; for one model, the module's own hooks will do.

# %% Data
def mnist_tensors(data_dir: str, train: bool) -> TensorDataset:
    """The whole split, normalized once: far cheaper than ToTensor + Normalize per sample per epoch."""
    dataset = MNIST(data_dir, train=train, download=False)
    images = (dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)).unsqueeze(1)
    return TensorDataset(images, dataset.targets)


def mnist_split(data_dir: str, val_size: int, seed: int) -> list:
    full = mnist_tensors(data_dir, train=True)
    generator = torch.Generator().manual_seed(seed)  # same split every run, in every process
    return random_split(full, [len(full) - val_size, val_size], generator=generator)


class MNISTDataModule(pl.LightningDataModule):
    def __init__(self, data_dir: str = "data", batch_size: int = 128, eval_batch_size: int = 128,
                 val_size: int = 5000, num_workers: int = 0, seed: int = 42):
        super().__init__()
        self.save_hyperparameters()

    def prepare_data(self):  # once per machine (local rank 0 only), before setup: the place to download
        MNIST(self.hparams.data_dir, download=True)  # all four files, train and test

    def setup(self, stage: str):  # on every process: the same seeded split as MNISTClassifier.setup
        if stage in ("fit", "validate"):
            self.train_set, self.valid_set = mnist_split(self.hparams.data_dir, self.hparams.val_size, self.hparams.seed)
        if stage in ("test", "predict"):
            self.test_set = mnist_tensors(self.hparams.data_dir, train=False)

    def train_dataloader(self):
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.valid_set, self.hparams.eval_batch_size)

    def test_dataloader(self):
        return self._loader(self.test_set, self.hparams.eval_batch_size)

    predict_dataloader = test_dataloader

    def _loader(self, dataset, batch_size, shuffle=False):
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)


# %% [markdown]
# ## Saving and exporting
# Weights in (a `state_dict` of the network, or a Lightning `.ckpt`) and out: `torch.export` (`.pt2`) or ONNX.

# %% Saving and exporting
def load_weights(model: MNISTClassifier, path: str) -> None:
    try:  # weights_only=True: tensors and plain containers only, no arbitrary code on load
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        die(f"cannot read {path} ({error.__class__.__name__}); pass a .pt saved with --save_model or a Lightning .ckpt")
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):  # a Lightning checkpoint
        saved = {k.removeprefix("model."): v for k, v in saved["state_dict"].items() if str(k).startswith("model.")}
    if not (isinstance(saved, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in saved.items())):
        die(f"{path} holds no state_dict of tensors; pass a .pt saved with --save_model or a Lightning .ckpt")
    with exit_on_error(f"{path} does not hold weights for MNISTConvNet"):  # another network's names or shapes
        model.model.load_state_dict(saved)


def export_model(model: MNISTClassifier, stem: Path, kind: str) -> None:
    model = model.to("cpu", torch.float32).eval()  # float32 inputs and weights, whatever --precision trained
    if kind == "pt2":  # TorchScript's successor (to_torchscript is deprecated); load: torch.export.load(path).module()
        program = torch.export.export(model, (model.example_input_array,),
                                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
        write_atomically(Path(f"{stem}.pt2"), lambda file: torch.export.save(program, file))
        print(f"exported {stem}.pt2 (torch.export)")
        return
    path = f"{stem}.onnx"
    # The exporter narrates every pass: show only an error, as one line (a missing onnxscript is the usual one).
    with exit_on_error("--export onnx failed (pip install onnx onnxscript if missing)"), exit_if_write_fails(stem.parent):
        with contextlib.redirect_stdout(io.StringIO()):
            model.to_onnx(path, model.example_input_array, input_names=["image"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False)
    print(f"exported {path} (ONNX)")
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime is not installed, so the export was not checked: pip install onnxruntime")
        return
    images = mnist_tensors(model.hparams.data_dir, train=False).tensors[0][:256]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    onnx_logits = torch.from_numpy(session.run(None, {"image": images.numpy()})[0])
    torch_logits = model(images).detach()
    agree = (onnx_logits.argmax(1) == torch_logits.argmax(1)).float().mean().item()
    max_diff = (onnx_logits - torch_logits).abs().max().item()
    print(f"onnxruntime vs PyTorch on 256 test images: {agree:.0%} same predictions, max logit difference {max_diff:.2e}")


# %% [markdown]
# ## Main
# What the command line runs, and the last cell with the parameters cell's `ARGS`. Then flags, checks, helpers.

# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    out = Path(args.output_dir)
    before = file_times(out)  # to tell this run's outputs from an earlier run's
    train = not (args.load_model or args.skip_training)

    data = dict(data_dir=args.data_dir, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
    model = MNISTClassifier(**data, lr=args.lr, compile_mode=args.compile)
    if args.named_modules or args.named_parameters:
        print_structure(model, args.named_modules, args.named_parameters)
        return 0
    if args.load_model:
        load_weights(model, args.load_model)
    check_flags_fit_the_data(args, prepare_mnist(args.data_dir), training=train)
    datamodule = MNISTDataModule(**data) if args.datamodule else None
    check_multi_node(args.num_nodes)

    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="valid_acc", mode="max",
                                 enable_version_counter=False)
    csv_logger = CSVLogger(out, name="csv_logs")
    with exit_on_error("cannot build the Trainer from these flags"):
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes,
            precision=args.precision, max_epochs=args.epochs, deterministic=True, plugins=[AtomicCheckpointIO()],
            logger=[csv_logger, TensorBoardLogger(out, name="tb_logs")], callbacks=[checkpoint], profiler=args.profiler,
            fast_dev_run=args.fast_dev_run, limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches, limit_test_batches=args.limit_test_batches,
            overfit_batches=args.overfit_batches, val_check_interval=args.val_check_interval)
    check_compile(args.compile, trainer.strategy.root_device)

    if train:
        with exit_if_interrupted(trainer), exit_if_write_fails(out):  # logs: one line on a full disk
            trainer.fit(model, datamodule=datamodule)
    # Test the best checkpoint, as Lightning's examples do; else the weights in memory (--load_model, --skip_training).
    best = checkpoint.best_model_path if train else ""
    with exit_if_write_fails(out):
        test_metrics = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0]
        predicted, labels = trainer.predict(model, datamodule=datamodule)[0]  # the first batch

    if trainer.is_global_zero:  # under DDP every rank runs main(); only one reports and writes
        if train and not args.fast_dev_run:
            history = epoch_history(Path(csv_logger.log_dir, "metrics.csv"))
            print("\n" + history.to_string(float_format="{:.4f}".format))
            write_atomically(out / "history.csv", history.to_csv)
            plot_history(history, out)
        print(f"\ntest accuracy: {test_metrics['test_acc']:.4f}")
        print("per digit:   " + " ".join(f"{d}:{a:.3f}" for d, a in enumerate(model.per_digit_accuracy)))
        print(f"first predictions {predicted[:12].tolist()}\n     true labels  {labels[:12].tolist()}")
        if args.save_model:
            save_atomically(model.model.state_dict(), out / f"{MODEL_FILE}.pt")
        if args.export:
            export_model(model, out / MODEL_FILE, args.export)
        print_outputs(out, before)

    if torch.distributed.is_available() and torch.distributed.is_initialized():  # else DDP may abort (134)
        torch.distributed.destroy_process_group()
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train, validate, test and export an MNIST CNN with the Lightning 2.x Trainer.",
                                     formatter_class=DefaultsHelpFormatter)
    parser.error = die  # every bad flag value: one line, exit 2
    add = parser.add_argument_group("data and outputs").add_argument
    add("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
        help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    add("--output_dir", "--output-dir", type=output_folder, default="outputs/Basic_usage_of_lightning", help="where logs, plots and models go")
    add("--val_size", "--val-size", type=number(int, min=1), default=5000, help="training images held out for validation")
    add("--num_workers", "--num-workers", type=number(int, min=0), default=0, help="DataLoader worker processes")
    add("--datamodule", action="store_true", help="feed the Trainer from MNISTDataModule, not the module's hooks")
    add = parser.add_argument_group("training").add_argument
    add("--batch_size", "--batch-size", type=number(int, min=1), default=128, metavar="N", help="training batch size")
    add("--eval_batch_size", "--eval-batch-size", "--test_batch_size", "--test-batch-size", type=number(int, min=1),
        metavar="N", help="validation and test batch size (default: --batch_size)")
    add("--epochs", type=number(int, min=1), default=3, metavar="N", help="training epochs")
    add("--lr", type=number(float, above=0), default=0.01, help="peak learning rate of the one-cycle schedule")
    add("--seed", type=number(int, min=0, max=2**32 - 1), default=42, help="seeds weights, split and shuffling")
    add("--compile", nargs="?", const="default", choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
        metavar="MODE", help="torch.compile the network in this mode (default when given alone; reduce-overhead needs a GPU)")
    add = parser.add_argument_group("hardware (passed to pl.Trainer)").add_argument
    add("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    add("--devices", default="auto", help="how many devices, or which: 2, 0,1, auto")
    add("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ...")
    add("--num_nodes", "--num-nodes", type=number(int, min=1), default=1, help="machines for multi-node DDP; see the README")
    add("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, 64-true")
    add = parser.add_argument_group("debugging (passed to pl.Trainer)").add_argument
    add("--fast_dev_run", "--fast-dev-run", nargs="?", type=number(int, min=0), const=1, default=0, metavar="N",
        help="run N batches of each stage (1 when given alone), write no logs")
    for stage in ("train", "val", "test"):
        add(f"--limit_{stage}_batches", f"--limit-{stage}-batches", type=batch_count, default=1.0, metavar="N|F",
            help=f"{stage} batches per epoch: a count, or a fraction")
    add("--overfit_batches", "--overfit-batches", type=batch_count, default=0.0, metavar="N|F", 
        help="train and validate on the same few batches: the model should reach ~100%%")
    add("--val_check_interval", "--val-check-interval", type=batch_count, default=1.0, metavar="N|F",
        help="validate every N training batches, or every fraction of an epoch")
    add("--profiler", choices=["simple", "advanced", "pytorch"], help="print where the time went after fit")
    add = parser.add_argument_group("model files and inspection").add_argument
    add("--save_model", "--save-model", action="store_true", help=f"save {MODEL_FILE}.pt (state_dict)")
    add("--load_model", "--load-model", metavar="PATH", type=existing_file, help="test these weights (.pt or .ckpt), no training")
    add("--skip_training", "--skip-training", action="store_true", help="test the untrained model (~10%%, a wiring check)")
    add("--export", choices=["onnx", "pt2"], help="export the model after training or loading")
    add("--named_modules", "--named-modules", action="store_true", help="print the modules and exit")
    add("--named_parameters", "--named-parameters", action="store_true", help="print the parameters and exit")
    add = parser.add_argument_group("flags of the original Lightning 1.x tutorial, still accepted").add_argument
    add("--no-cuda", "--no_cuda", action=OriginalTutorialFlag, nargs=0, dest="accelerator", const="cpu", note="it is --accelerator cpu now")
    add("--test", action=OriginalTutorialFlag, nargs=0, note="no effect: training always ends with a test; --load_model tests a saved file")
    add("--gamma", action=OriginalTutorialFlag, type=float, note="no effect: the LR follows a one-cycle schedule, not StepLR's gamma")
    add("--log-interval", "--log_interval", action=OriginalTutorialFlag, type=number(int, min=1),
        note="no effect: metrics are logged once per epoch; the progress bar shows the running loss")
    args = parser.parse_args(argv)
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    return args


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


def batch_count(text: str):
    """A count of batches (an int, at least 1) or a fraction of them (a float in (0, 1])."""
    return number(float, above=0, max=1)(text) if any(c in text for c in ".eE") else number(int, min=1)(text)


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: {'is a folder, not a file' if Path(text).is_dir() else 'no such file'}")
    return text


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help adds each flag's default, except a missing one (None) or a switch's (False)."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


def output_folder(text: str) -> str:
    """A folder the run can write to: not a file, and under a writable folder when new."""
    existing = next(p for p in [Path(text), *Path(text).parents] if p.exists() or p == Path(p.anchor or "."))
    if existing.exists() and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder; pick another --output_dir")
    if not os.access(existing if existing.exists() else ".", os.W_OK):
        raise argparse.ArgumentTypeError(f"{existing} is not writable; pick another --output_dir")
    return text


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
def file_times(folder: Path) -> dict:
    """{path: modification time} of every file under folder: what an earlier run left there."""
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def print_outputs(out: Path, before: dict) -> None:
    """What out holds, marking what this run did not write (before: file_times(out) at its start)."""
    print(f"\nOutputs in {out.resolve()}:")
    for path in sorted(out.glob("*")):
        files = [path] if path.is_file() else [file for file in path.rglob("*") if file.is_file()]
        earlier = [file for file in files if before.get(file) == file.stat().st_mtime_ns]
        note = " (earlier run)" if files and earlier == files else " (partly an earlier run's)" if earlier else ""
        print(f"  {path.name}{'/' if path.is_dir() else ''}{note}")


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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


def check_flags_fit_the_data(args, train_images: int, training: bool = True) -> None:
    """Flags each valid alone that misfit the data or each other: one line now, not a crash deep in torch later."""
    val_size = getattr(args, "val_size", 0)  # check_point_load has no validation set
    if training and val_size >= train_images:
        die(f"--val_size {val_size} leaves no training images ({train_images} in {args.data_dir}); "
            f"use a smaller --val_size")
    for flag in ("lr", "qat_lr"):  # Adam moves each weight by about the learning rate per step
        if training and getattr(args, flag, 0) > 1:
            die(f"--{flag} {getattr(args, flag)} is too large: past 1, each step moves the weights by more than "
                f"their own size and training diverges or overflows; the default is 0.01 (or 0.001 for QAT)")
    test_images = idx_length(Path(args.data_dir, "MNIST", "raw", MNIST_FILES[2]))
    if max(args.batch_size, args.eval_batch_size) > max(train_images, test_images):
        die(f"a batch of {max(args.batch_size, args.eval_batch_size)} is more than all {train_images} training "
            f"images; pass a --batch_size (and --eval_batch_size) of at most {train_images}")
    processes = (args.devices if isinstance(args.devices, int) else 1) * getattr(args, "num_nodes", 1)
    batches = {"train": math.ceil((train_images - val_size) / args.batch_size / processes),
               "val": math.ceil(val_size / args.eval_batch_size / processes),
               "test": math.ceil(test_images / args.eval_batch_size / processes)}
    for stage in ("train", "val", "test") if training else ("test",):
        limit = getattr(args, f"limit_{stage}_batches", 1.0)
        if isinstance(limit, float) and limit * batches[stage] < 1 and not args.fast_dev_run:
            die(f"--limit_{stage}_batches {limit} of {batches[stage]} {stage} batches is less than one batch; "
                f"pass a larger fraction, or a number of batches such as 1")
    limit, interval = getattr(args, "limit_train_batches", 1.0), getattr(args, "val_check_interval", 1.0)
    per_epoch = min(limit, batches["train"]) if isinstance(limit, int) else int(limit * batches["train"])
    if training and isinstance(interval, int) and interval > per_epoch and not args.fast_dev_run:
        die(f"--val_check_interval {interval} is more than the {per_epoch} training batches of an epoch; pass "
            f"at most {per_epoch}, or a fraction of an epoch")


def check_multi_node(num_nodes: int) -> None:
    """Several machines need a rendezvous: check it before the Trainer waits on one."""
    if num_nodes == 1 or "SLURM_NTASKS" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        return  # srun and torchrun set up the rendezvous themselves
    if missing := [name for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if name not in os.environ]:
        die(f"--num_nodes {num_nodes} needs {', '.join(missing)} in the environment of every machine "
            f"(or run under torchrun or srun); see the README's 'Past one machine'")
    address, port, rank = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], os.environ["NODE_RANK"]
    if not (port.isdigit() and 0 < int(port) < 65536):
        die(f"MASTER_PORT={port} is not a port number (1 to 65535); set the same free port on every machine")
    if not (rank.isdigit() and int(rank) < num_nodes):
        die(f"NODE_RANK={rank}, but --num_nodes {num_nodes} numbers the machines 0 to {num_nodes - 1} "
            f"(0 on the one at MASTER_ADDR)")
    try:  # a name that does not resolve would make every machine wait for the rendezvous forever
        socket.getaddrinfo(address, int(port))
    except OSError as error:
        die(f"MASTER_ADDR={address} does not resolve ({error.strerror}); set it to the IP address or host "
            f"name of the machine with NODE_RANK=0")
    if rank == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
        with socket.socket() as probe:
            try:  # node 0 hosts the rendezvous: its port must be free
                probe.bind((address, int(port)))
            except OSError as error:
                die(f"cannot host the rendezvous at {address}:{port} ({error.strerror or error}); pick another "
                    f"MASTER_PORT on every machine")


@contextlib.contextmanager
def exit_on_error(what: str):
    """An error from a library that our flags caused: one line, exit 2, not a traceback."""
    try:
        yield
    except Exception as error:
        die(f"{what}: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}")


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through save_atomically (a full disk: one line, old file kept)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_atomically(checkpoint, Path(path))


def save_atomically(obj, path: Path) -> None:
    write_atomically(path, lambda file: torch.save(obj, file))


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


def write_failure(error: BaseException) -> str:
    """Why the disk refused a write and the fix, if error (or one behind it, as MLflow wraps it) says so; else ""."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            return f"{error.strerror}; free some space or pick another --output_dir"
        if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"{error.strerror}; pick an --output_dir you can write to"
        error = error.__cause__ or error.__context__
    return ""


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


def epoch_history(metrics_csv: Path) -> pd.DataFrame:
    """One row per epoch from CSVLogger's file, where train and valid values sit on separate rows."""
    metrics = pd.read_csv(metrics_csv)
    columns = [c for c in ("train_loss", "valid_loss", "train_acc", "valid_acc") if c in metrics]
    return metrics.groupby("epoch")[columns].last().dropna(how="all")  # last(): the epoch's final validation


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


def print_structure(model: nn.Module, modules: bool, parameters: bool) -> None:
    for name, module in model.named_modules() if modules else []:
        print(f"{name or '(LightningModule)':28s} {module.__class__.__name__}")
    for name, parameter in model.named_parameters() if parameters else []:
        print(f"{name:28s} {str(tuple(parameter.shape)):16s} {parameter.numel():>8d}")
    if parameters:
        print(f"total trainable parameters: {sum(p.numel() for p in model.parameters()):,}")


def check_compile(mode: str, device: torch.device) -> None:
    """--compile's needs, checked before training: CUDA graphs need a GPU, inductor on a CPU a C++ compiler."""
    if mode == "reduce-overhead" and device.type != "cuda":
        die(f"--compile reduce-overhead replays CUDA graphs, which need a CUDA GPU (this run is on {device.type}); "
            f"use --compile default or --compile max-autotune-no-cudagraphs")
    if mode and device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler
        with exit_on_error(f"--compile on a CPU needs a C++ compiler (install g++ or set CXX to one, or run without "
                           f"--compile), and {os.environ.get('CXX', 'g++')} does not run"):
            get_cpp_compiler()  # what inductor runs first: $CXX (else g++) --version


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
