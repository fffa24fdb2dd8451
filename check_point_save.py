"""
Title: Save checkpoints with ModelCheckpoint and resume a killed run
Description: Keep the best and last MNIST checkpoints with several callbacks, and resume exactly.

What it teaches
    `ModelCheckpoint` in depth: several callbacks at once (lowest valid_loss, highest valid_acc,
    one file every N epochs), `dirpath`, a `filename` template with the epoch and the metric,
    `save_top_k`, `save_last`, `save_weights_only`, `every_n_epochs`; `trainer.save_checkpoint`
    for a manual save; `trainer.fit(ckpt_path="last")` to resume; what an exact resume needs
    beyond Lightning's own state (the random number generators that dropout and shuffling draw
    from); and writing each file atomically, so that a kill never leaves half a checkpoint.

How to run
    python check_point_save.py                          # 3 epochs: best 2 by loss, best 2 by accuracy, every 2 epochs, last
    python check_point_save.py --data_dir ../shared/data # MNIST already on disk, offline
    python check_point_save.py --resume                  # after a crash or kill: continue from checkpoints/last.ckpt
    python check_point_save.py --overwrite --save_top_k 3 --every_n_epochs 1
    python check_point_save.py --overwrite --save_weights_only  # smaller files, but none of them can resume
    python check_point_load.py --pick best_acc           # then load, inspect and test one of them

What it writes (under --output_dir, default outputs/check_point_save)
    checkpoints/epoch=NN-valid_loss=X.ckpt   the --save_top_k epochs with the lowest valid_loss
    checkpoints/epoch=NN-valid_acc=X.ckpt    the --save_top_k epochs with the highest valid_acc
    checkpoints/epoch=NN.ckpt                one every --every_n_epochs epochs, all kept
    checkpoints/last.ckpt                    the latest epoch, what --resume continues from
    checkpoints/manual.ckpt                  trainer.save_checkpoint after training
    csv_logs/version_N/metrics.csv, tb_logs/version_N/   the loggers (a resumed run adds a version)
    history.csv, loss.png, acc.png           the per-epoch table of the whole run, across --resume
"""

# %% Imports
import argparse
import contextlib
import io
import os
import re
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; no display is needed
import matplotlib.pyplot as plt
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_fabric.plugins.io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import Accuracy
from torchvision.datasets import MNIST

# The data are tensors in memory, so loader workers have nothing to speed up (see the README's
# data-pipeline benchmark); Lightning's hint about adding workers would only be noise here.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 calls a pytree check that torch 2.14 deprecates; nothing a user can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# On --resume the folder holds this run's checkpoints by design; a fresh run refuses a non-empty
# folder itself (see main), so Lightning's warning, once per callback, would only be noise.
warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
HISTORY_COLUMNS = ("train_loss", "valid_loss", "train_acc", "valid_acc")
# Flags that shape the run: a resumed run must use the same ones to continue the same run.
RUN_SETTINGS = ("epochs", "batch_size", "lr", "seed", "val_size", "limit_train_batches")


# %% Model
class MNISTConvNet(nn.Module):
    """Two conv blocks and two linear layers: 1x28x28 image in, 10 class logits out."""

    def __init__(self, hidden_units: int = 128, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x14x14
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32x7x7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, hidden_units), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_units, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Logits, not log-probabilities: cross_entropy applies log_softmax itself.
        return self.classifier(self.features(x))


# %% LightningModule
class MNISTClassifier(pl.LightningModule):
    """The training recipe around MNISTConvNet: steps, metrics, optimizer and data."""

    def __init__(self, data_dir: str = "data", batch_size: int = 128, lr: float = 0.01,
                 hidden_units: int = 128, dropout: float = 0.25, val_size: int = 5000,
                 num_workers: int = 0, seed: int = 42):
        super().__init__()
        # Plain types only: the checkpoint then loads with torch.load(weights_only=True), which
        # refuses any other Python object (an argparse.Namespace here would make loading fail).
        self.save_hyperparameters()
        self.model = MNISTConvNet(hidden_units, dropout)
        # One metric object per stage, so their running states never mix.
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.valid_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)

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
        # The one-cycle length is fixed here from --epochs and --limit_train_batches; a resumed run
        # gets its position back from the checkpoint, which is why it must keep the same flags.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str):
        if stage in ("fit", "validate"):
            full = mnist_tensors(self.hparams.data_dir, train=True)
            generator = torch.Generator().manual_seed(self.hparams.seed)  # same split every run
            sizes = [len(full) - self.hparams.val_size, self.hparams.val_size]
            self.train_set, self.valid_set = random_split(full, sizes, generator=generator)
        if stage in ("test", "predict"):
            self.test_set = mnist_tensors(self.hparams.data_dir, train=False)

    def train_dataloader(self):
        # shuffle=True draws each epoch's order from the global random generator, which
        # ResumableState saves and restores: a resumed run shuffles epoch N as an uninterrupted one.
        # (Under DDP Lightning swaps in a DistributedSampler, whose order depends on seed + epoch.)
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.valid_set)

    def test_dataloader(self):
        return self._loader(self.test_set)

    def _loader(self, dataset, shuffle=False):
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=workers, persistent_workers=workers > 0)


# %% Data
def prepare_mnist(data_dir: str) -> int:
    """Download MNIST into data_dir/MNIST/raw unless it is there; exit with a fix-it line if not.

    Returns the number of training images (60000 for the real MNIST).
    """
    try:
        # torchvision prints every mirror it tries; one line from us is clearer.
        with contextlib.redirect_stdout(io.StringIO()):
            MNIST(data_dir, train=False, download=True)
            return len(MNIST(data_dir, train=True, download=True))
    except (RuntimeError, OSError) as error:
        raw = Path(data_dir, "MNIST", "raw")
        reason = str(error).splitlines()[0].rstrip(":")
        die(f"MNIST is not in {raw} and could not be downloaded ({reason}). Copy the four raw files "
            f"(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            f"t10k-labels-idx1-ubyte) there, or point --data_dir or PATH_DATASETS at a folder "
            f"that holds MNIST/raw.")


def mnist_tensors(data_dir: str, train: bool) -> TensorDataset:
    """The whole split as normalized float tensors, decoded once by torchvision."""
    dataset = MNIST(data_dir, train=train, download=False)
    images = (dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)).unsqueeze(1)
    return TensorDataset(images, dataset.targets)


# %% Checkpointing
def checkpoint_callbacks(ckpt_dir: Path, args) -> dict:
    """Three ModelCheckpoint callbacks side by side, each with its own rule for what to keep.

    Lightning runs them in this order at the end of every epoch. last.ckpt is written by the
    last one, so it records what the other two kept this epoch: a run killed right after it
    resumes with the same files ranked the same way.
    """
    common = dict(dirpath=ckpt_dir, save_weights_only=args.save_weights_only,
                  # The epoch is in every name, so a same-named file can only be an interrupted
                  # attempt at this very epoch: overwrite it rather than add a "-v1" copy.
                  enable_version_counter=False)
    return {
        # No monitor: a snapshot every N epochs; save_top_k=-1 keeps them all.
        "periodic": ModelCheckpoint(filename="{epoch:02d}", every_n_epochs=args.every_n_epochs,
                                    save_top_k=-1, **common),
        # filename: "{epoch:02d}-{valid_acc:.4f}" becomes "epoch=03-valid_acc=0.9912.ckpt".
        "best_acc": ModelCheckpoint(filename="{epoch:02d}-{valid_acc:.4f}", monitor="valid_acc",
                                    mode="max", save_top_k=args.save_top_k, **common),
        # save_last: also write last.ckpt. Lightning writes it only in an epoch where this callback
        # saved, which for a top-k callback is every epoch.
        "best_loss": ModelCheckpoint(filename="{epoch:02d}-{valid_loss:.4f}", monitor="valid_loss",
                                     mode="min", save_top_k=args.save_top_k, save_last=True, **common),
    }


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a hidden file beside its final name, then rename it into place.

    Lightning 2.6 already avoids partial files with an fsspec transaction, but for a local path
    that writes into the system temp folder and moves the file with shutil.move: a rename only
    when the temp folder is on the same filesystem, otherwise a copy that a kill can interrupt
    half-way under the final name. Writing beside the target makes os.replace a true rename,
    and fsync makes the data reach the disk before the new name does.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")  # not *.ckpt: no loader will pick it up
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:  # an error or Ctrl-C mid-write; after a SIGKILL the next save overwrites it
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, path)  # readers see the old file or the new one, never half of one


class ResumableState(pl.Callback):
    """What an exact resume needs that Lightning leaves out of a checkpoint.

    Lightning saves and restores the weights, optimizer, LR scheduler, loop counters and the
    state of every callback, but not the random number generators (dropout draws from them).
    This callback's state goes into every full checkpoint: the generators, the per-epoch
    history (the CSV log of a killed process stops at its last flush) and the flags of the run.
    """

    def __init__(self, settings: dict):
        self.settings = settings
        self.history = []

    def on_train_epoch_end(self, trainer, pl_module):
        # Lightning calls this before ModelCheckpoint's hook (checkpoint callbacks go last), so
        # the checkpoint of this epoch already holds this row; callback_metrics holds epoch means.
        metrics = trainer.callback_metrics
        row = {name: float(metrics[name]) for name in HISTORY_COLUMNS if name in metrics}
        self.history.append({"epoch": trainer.current_epoch, **row})

    def state_dict(self):
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
        return {"settings": self.settings, "history": self.history,
                "torch_rng": torch.get_rng_state(), "cuda_rng": cuda}

    def load_state_dict(self, state_dict):
        self.history = state_dict["history"]
        torch.set_rng_state(state_dict["torch_rng"])
        if state_dict["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda_rng"])


def read_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True, or one error line that says what is wrong with the file."""
    if path.stat().st_size == 0:
        die(f"{path} is empty (0 bytes), probably left by an interrupted copy; use another checkpoint")
    try:
        with warnings.catch_warnings():
            # Random bytes can look like a pickle header; torch warns about it before failing.
            warnings.filterwarnings("ignore", ".*Detected pickle protocol.*")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for bad files; all mean "unreadable"
        unsafe = re.search(r"GLOBAL (\S+)", str(error))
        if unsafe:
            die(f"{path} holds a Python object ({unsafe.group(1)}) that weights_only=True refuses to "
                f"unpickle, since unpickling it could run code; re-save it with plain types")
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":  # torch.save writes a zip archive: this one is cut or corrupt
                die(f"{path} is truncated or damaged (an incomplete zip archive); use another checkpoint")
        die(f"{path} is not a PyTorch checkpoint ({error.__class__.__name__})")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        die(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return checkpoint


def check_resumable(path: Path, settings: dict) -> None:
    """Refuse, before anything is written, a checkpoint this run cannot continue exactly."""
    checkpoint = read_checkpoint(path)
    if "optimizer_states" not in checkpoint:
        die(f"{path} was saved with save_weights_only=True: it holds the weights but no optimizer, "
            f"LR-scheduler or callback state, so training cannot resume from it. Load it for "
            f"inference with check_point_load.py, or train again without --save_weights_only")
    state = checkpoint.get("callbacks", {}).get(ResumableState.__qualname__)
    if state is None:
        die(f"{path} was not written by check_point_save.py (it has no ResumableState); "
            f"resume from this script's own last.ckpt")
    changed = [f"--{name} {state['settings'][name]} (now {value})" for name, value in settings.items()
               if state["settings"].get(name) != value]
    if changed:
        die(f"{path} was trained with {', '.join(changed)}; resume with the same flags, or start "
            f"over with --overwrite (a one-cycle schedule cannot be stretched)")


def checkpoint_table(ckpt_dir: Path, callbacks: dict, every_n_epochs: int) -> str:
    """Every .ckpt in the folder: which rule kept it, its monitored value and its rank."""
    kept = {}
    for name in ("best_loss", "best_acc"):
        callback = callbacks[name]
        ranked = sorted(callback.best_k_models.items(), key=lambda item: float(item[1]),
                        reverse=callback.mode == "max")
        for rank, (path, score) in enumerate(ranked, start=1):
            kept[Path(path).name] = (name, f"{callback.monitor}={float(score):.4f}", str(rank))
    named = {"last.ckpt": "save_last", "manual.ckpt": "trainer.save_checkpoint"}
    lines = [f"  {'file':34s} {'kept by':24s} {'value':18s} {'rank':4s} {'size':>8s}"]
    for path in sorted(ckpt_dir.glob("*.ckpt")):
        periodic = re.fullmatch(r"epoch=\d+\.ckpt", path.name) and f"every_n_epochs={every_n_epochs}"
        # Untracked: an epoch saved by an interrupted attempt that the resumed run ranked otherwise.
        kept_by, value, rank = kept.get(path.name, (named.get(path.name) or periodic
                                                     or "(not tracked by this run)", "", ""))
        size = f"{path.stat().st_size / 1e3:.0f} kB"
        lines.append(f"  {path.name:34s} {kept_by:24s} {value:18s} {rank:4s} {size:>8s}")
    return "\n".join(lines)


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    out = Path(args.output_dir)
    ckpt_dir = out / "checkpoints"
    settings = {name: getattr(args, name) for name in RUN_SETTINGS}

    if args.resume:
        path = ckpt_dir / "last.ckpt" if args.resume == "last" else Path(args.resume)
        if not path.is_file():
            die(f"--resume: no {path} to continue from; train without --resume first")
        check_resumable(path, settings)
    previous = [] if args.resume else sorted(ckpt_dir.glob("*.ckpt"))
    if previous and not args.overwrite:
        die(f"{ckpt_dir} already holds {len(previous)} checkpoints of an earlier run; continue it "
            f"with --resume, delete them with --overwrite, or pick another --output_dir")
    if args.val_size >= prepare_mnist(args.data_dir):
        die(f"--val_size {args.val_size} leaves no training images; use a smaller --val_size")
    for path in previous + sorted(ckpt_dir.glob(".*.partial")):  # --overwrite, once all checks passed
        path.unlink(missing_ok=True)  # missing_ok: under DDP every rank runs this

    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, lr=args.lr,
                            val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
    callbacks = checkpoint_callbacks(ckpt_dir, args)
    state = ResumableState(settings)
    try:
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
            num_nodes=args.num_nodes, precision=args.precision, max_epochs=args.epochs,
            logger=[CSVLogger(out, name="csv_logs"), TensorBoardLogger(out, name="tb_logs")],
            callbacks=[state, *callbacks.values()], plugins=[AtomicCheckpointIO()],
            fast_dev_run=args.fast_dev_run, limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches, limit_test_batches=args.limit_test_batches,
            deterministic=True)
    except (ValueError, RuntimeError) as error:  # e.g. --accelerator gpu on a machine without one
        die(f"cannot build the Trainer: {error}")

    # ckpt_path="last": Lightning finds last.ckpt through the callbacks' dirpath, restores weights,
    # optimizer, scheduler, loop counters and callback states, and goes on from the next epoch.
    trainer.fit(model, ckpt_path=args.resume, weights_only=True)
    if not args.fast_dev_run:  # fast_dev_run turns the callbacks off; keep the folder as it was
        # A manual save: this moment, this path, no ranking and no clean-up; the callbacks decide
        # when to save and which files to keep. On every rank: under DDP all take part, rank 0 writes.
        trainer.save_checkpoint(ckpt_dir / "manual.ckpt", weights_only=args.save_weights_only)
    # Read what the callbacks kept now: test(ckpt_path=...) restores every callback's state from
    # that file, so afterwards they would describe the run as it was at the best epoch.
    best, best_loss = callbacks["best_acc"].best_model_path, callbacks["best_loss"].best_model_path
    history = pd.DataFrame(state.history).set_index("epoch")
    table = checkpoint_table(ckpt_dir, callbacks, args.every_n_epochs) if trainer.is_global_zero else ""
    test_metrics = trainer.test(model, ckpt_path=best or None, verbose=False, weights_only=True)[0]

    if trainer.is_global_zero:  # under DDP every rank runs main(); only one reports and writes
        print("\n" + history.to_string(float_format="{:.4f}".format))
        if not args.fast_dev_run:
            history.to_csv(out / "history.csv")
            plot_history(history, out)
        print(f"\ntest accuracy: {test_metrics['test_acc']:.4f}   ({Path(best).name or 'weights in memory'})")
        if not args.fast_dev_run:
            print(f"\nCheckpoints in {ckpt_dir.resolve()}:\n{table}")
            print(f"best by valid_loss: {Path(best_loss).name}\n"
                  f"best by valid_acc:  {Path(best).name}\n"
                  f"load one with:      python check_point_load.py --ckpt_dir {ckpt_dir} --pick best_acc")
        print(f"\nOutputs in {out.resolve()}:")
        for path in sorted(out.glob("*")):
            print(f"  {path.name}{'/' if path.is_dir() else ''}")

    # Close the process group ourselves: a DDP process that exits with it open can abort (134).
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def plot_history(history: pd.DataFrame, out: Path) -> None:
    for kind in ("loss", "acc"):
        columns = [c for c in (f"train_{kind}", f"valid_{kind}") if c in history]
        ax = history[columns].plot(marker="o", grid=True, title=f"MNIST {kind} per epoch")
        ax.set_xlabel("epoch")
        ax.figure.savefig(out / f"{kind}.png", dpi=100, bbox_inches="tight")
        plt.close(ax.figure)


def die(message: str) -> None:
    """One line on stderr and exit code 2: bad input is the user's to fix, not a crash."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# %% Flags
def number(text: str):
    """An int (a count of batches) or a float (a fraction of them), as the Trainer accepts."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def devices(text: str):
    return int(text) if text.isdigit() else text  # "auto", 2, or a list such as "0,1"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[1],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data and outputs")
    data.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                      help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    data.add_argument("--output_dir", "--output-dir", default="outputs/check_point_save",
                      help="where checkpoints/, logs and plots go")
    data.add_argument("--val_size", "--val-size", type=int, default=5000, help="training images held out for validation")
    data.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader worker processes")

    train = parser.add_argument_group("training")
    train.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    train.add_argument("--epochs", type=int, default=3, metavar="N")
    train.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the one-cycle schedule")
    train.add_argument("--seed", type=int, default=42, help="seeds weights, split and shuffling")

    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument("--save_top_k", "--save-top-k", type=int, default=2, metavar="K",
                      help="best files kept per monitored metric; -1 keeps every epoch")
    ckpt.add_argument("--save_weights_only", "--save-weights-only", action="store_true",
                      help="files hold the weights only: about a third the size, but cannot resume")
    ckpt.add_argument("--every_n_epochs", "--every-n-epochs", type=int, default=2, metavar="N",
                      help="also keep a snapshot every N epochs")
    ckpt.add_argument("--resume", nargs="?", const="last", metavar="PATH",
                      help="continue the run from checkpoints/last.ckpt (alone) or from PATH")
    ckpt.add_argument("--overwrite", action="store_true",
                      help="delete the checkpoints of an earlier run in --output_dir and start over")

    hardware = parser.add_argument_group("hardware (passed to pl.Trainer)")
    hardware.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    hardware.add_argument("--devices", type=devices, default="auto", help="how many devices, or which: 2, 0,1, auto")
    hardware.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ...")
    hardware.add_argument("--num_nodes", "--num-nodes", type=int, default=1, help="machines for multi-node DDP")
    hardware.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, 64-true")

    debug = parser.add_argument_group("debugging (passed to pl.Trainer)")
    debug.add_argument("--fast_dev_run", "--fast-dev-run", nargs="?", type=int, const=1, default=0, metavar="N",
                       help="run N batches of each stage (1 when given alone), write no checkpoints")
    for stage in ("train", "val", "test"):
        debug.add_argument(f"--limit_{stage}_batches", f"--limit-{stage}-batches", type=number, default=1.0,
                           metavar="N|F", help=f"{stage} batches per epoch: a count, or a fraction")
    args = parser.parse_args(argv)

    for flag in ("epochs", "batch_size", "val_size", "num_nodes", "every_n_epochs"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        die(f"--lr must be positive, got {args.lr}")
    if args.num_workers < 0:
        die(f"--num_workers cannot be negative, got {args.num_workers}")
    if args.save_top_k == 0 or args.save_top_k < -1:
        die(f"--save_top_k must be -1 (keep all) or at least 1, got {args.save_top_k} "
            f"(with 0 Lightning would not write last.ckpt either)")
    if args.limit_train_batches == 0:
        die("--limit_train_batches 0 leaves nothing to train")
    if args.limit_val_batches == 0:
        die("--limit_val_batches 0 leaves nothing to validate, but the callbacks monitor valid_loss and valid_acc")
    if args.resume and args.overwrite:
        die("--resume continues the earlier run and --overwrite deletes it; pass one of them")
    return args


if __name__ == "__main__":
    sys.exit(main())
