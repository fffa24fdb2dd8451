# %% [markdown]
# # Lightning loggers: a catalogue and several loggers at once
# Log one MNIST run to CSV, TensorBoard and MLflow together, then read the logs back.
#
# ## What it teaches
# `self.log` sends every value to every logger in `Trainer(logger=[...])`; a picture goes through each logger's own API.
# Without flags: a catalogue of the loggers. --demo: one run logged to CSV, TensorBoard and MLflow, then read back.
# ## How to run
# ```bash
# python loggers_lightning.py                                       # the catalogue: loggers_info/
# python loggers_lightning.py --demo --data_dir /path/to/datasets   # the demo, 2 epochs; it prints how to open the logs
# ```
# ## What it writes (under --output_dir, default outputs/loggers_lightning)
# ```text
# loggers_info/                                  AVAILABLE.txt and one <Name>.txt per logger (without --demo, or --info)
# csv_logs/, tb_logs/, mlflow.db, mlartifacts/   with --demo: each logger's run (metrics, hyperparameters, digit grid)
# history.csv, loss.png, acc.png                 the per-epoch table read from csv_logs' metrics.csv, and its curves
# mnist_classifier.pt                            with --save_model: the plain nn.Module's state_dict
# ```

# %% Parameters tags=["parameters"]
ARGS = []  # a notebook run's flags, as on the command line (e.g. ["--epochs", "1"]); a shell run reads its own

# %% Imports
import argparse
import contextlib
import importlib.metadata
import importlib.util
import errno
import inspect
import io
import logging
import math
import os
import re
import socket
import struct
import sys
import textwrap
import threading
import warnings
from collections import namedtuple
from pathlib import Path

import matplotlib

# Copied from Basic_usage_of_lightning.py
IN_NOTEBOOK = "get_ipython" in globals()  # Jupyter, VS Code cells, Colab: IPython defines it
if not IN_NOTEBOOK:
    matplotlib.use("Agg")  # a shell run draws into files; no display is needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import pytorch_lightning.loggers as pl_loggers
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CometLogger, CSVLogger, LitLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import Accuracy
from torchvision.datasets import MNIST

# Notes that teach nothing here: add workers (the data are in memory), a torch 2.14 deprecation inside Lightning,
# a limit left at its default 1.0 ("all of it"), a tip to install a cloud logger, MLflow creating its tables.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: not any(note in record.getMessage() for note in ("=1.0)` was configured", "Tip: For seamless")))
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MODEL_FILE = "mnist_classifier"
IMAGE_NAME = "test_digits"


# %% [markdown]
# ## Model
# A plain `nn.Module` with no Lightning in it: two conv blocks, two linear layers; 1x28x28 image in, 10 logits out.

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
# The training recipe. Everything it logs with `self.log` goes to every logger of the Trainer.

# %% LightningModule
class MNISTClassifier(pl.LightningModule):
    def __init__(self, data_dir: str = "data", batch_size: int = 128, eval_batch_size: int = 128,
                 lr: float = 0.01, val_size: int = 5000, num_workers: int = 0, seed: int = 42):
        super().__init__()
        self.save_hyperparameters()  # to every logger: hparams.yaml, TensorBoard's HPARAMS tab, MLflow params
        self.model = MNISTConvNet()
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
        # on_step and on_epoch: two series, train_loss_step (every log_every_n_steps) and train_loss_epoch.
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True)
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
        if batch_idx == 0:
            self.first_test_batch = (images[:16].cpu(), labels[:16].cpu(), logits[:16].argmax(1).cpu())

    def on_test_epoch_end(self):
        self.log("test_acc", self.test_acc)
        # Images are not scalars: self.log cannot take them, so use each logger's own API.
        grid = digit_grid(*self.first_test_batch)
        for logger in self.loggers:
            demo_of(type(logger).__name__).log_image(logger, IMAGE_NAME, grid, self.global_step)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str):
        if stage in ("fit", "validate"):
            self.train_set, self.valid_set = mnist_split(self.hparams.data_dir, self.hparams.val_size, self.hparams.seed)
        if stage == "test":
            self.test_set = mnist_tensors(self.hparams.data_dir, train=False)

    def train_dataloader(self):
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.valid_set, self.hparams.eval_batch_size)

    def test_dataloader(self):
        return self._loader(self.test_set, self.hparams.eval_batch_size)

    def _loader(self, dataset, batch_size, shuffle=False):
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size, shuffle=shuffle, num_workers=workers, persistent_workers=workers > 0)


# %% [markdown]
# ## Loggers
# One `DemoLogger` per --loggers name (a new logger is one more entry): its class, the package its backend needs and its
# install command, `build(out)`, `log_image(logger, name, picture, step)`, where the picture shows, `where(logger)`: its run.

# %% Loggers
DemoLogger = namedtuple("DemoLogger", "shows module install build log_image image_shows_in where", defaults=(
    None, None, None, lambda *args: None, "not supported (scalars and hyperparameters only)",
    lambda logger: str(getattr(logger, "log_dir", None) or logger.save_dir)))


def mlflow_store(out: Path) -> MLFlowLogger:
    out.mkdir(parents=True, exist_ok=True)  # SQLite: no server, and MLflow's API reads it (its ./mlruns does not)
    return MLFlowLogger(experiment_name="loggers_lightning", tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}",
                        artifact_location=(out / "mlartifacts").resolve().as_uri())


DEMO_LOGGERS = {
    "csv": DemoLogger("CSVLogger", build=lambda out: CSVLogger(out, name="csv_logs")),
    "tensorboard": DemoLogger(
        "TensorBoardLogger", "tensorboard", "pip install tensorboard", image_shows_in="IMAGES tab",
        build=lambda out: TensorBoardLogger(out, name="tb_logs", default_hp_metric=False),  # no placeholder hp_metric -1
        log_image=lambda logger, name, picture, step: logger.experiment.add_image(name, picture, step, dataformats="HWC")),
    "mlflow": DemoLogger(
        "MLFlowLogger", "mlflow", "pip install mlflow-skinny sqlalchemy alembic", image_shows_in=f"artifact {IMAGE_NAME}.png",
        build=mlflow_store, where=lambda logger: f"{logger.experiment.tracking_uri}, run {logger.run_id}",
        log_image=lambda logger, name, picture, step: logger.experiment.log_image(
            logger.run_id, picture, artifact_file=f"{name}.png")),
    "wandb": DemoLogger(
        "WandbLogger", "wandb", "pip install wandb",
        build=lambda out: WandbLogger(project="loggers_lightning", save_dir=out, offline=True),  # `wandb sync` uploads later
        log_image=lambda logger, name, picture, step: logger.log_image(key=name, images=[picture], step=step),
        image_shows_in="media panel", where=lambda logger: f"{logger.save_dir}/wandb/ (offline run; upload with: wandb sync)"),
    "comet": DemoLogger(
        "CometLogger", "comet_ml", "pip install comet-ml", image_shows_in="Graphics tab",
        build=lambda out: CometLogger(project="loggers_lightning", online=False, offline_directory=str(out / "comet")),
        log_image=lambda logger, name, picture, step: logger.experiment.log_image(picture, name=name, step=step)),
    "litlogger": DemoLogger(
        "LitLogger", "litlogger", "pip install litlogger",  # needs a lightning.ai login
        build=lambda out: LitLogger(root_dir=out / "litlogger", name="loggers_lightning")),
}


def build_loggers(names: list, out: Path) -> list:
    """The loggers whose backend is installed; a missing one is reported with the command that installs it."""
    loggers = []
    for demo in map(DEMO_LOGGERS.get, dict.fromkeys(["csv", "tensorboard", *names])):  # the table reads csv_logs
        if demo.module and importlib.util.find_spec(demo.module) is None:
            print(f"{demo.shows}: not installed here ({demo.module} is missing); enable it with: {demo.install}")
            continue
        try:
            loggers.append(demo.build(out))
        except Exception as error:  # noqa: BLE001 (third-party backends fail in their own ways)
            print(f"{demo.shows}: could not start ({type(error).__name__}: {' '.join(str(error).split())}); left out")
    return loggers


def started(loggers: list) -> list:
    """Open each logger's run now (folder, store, offline run): one that cannot start is left out here, not mid-training."""
    running = []
    for logger in loggers:
        try:
            logger.experiment
            running.append(logger)
        except Exception as error:  # noqa: BLE001
            if write_failure(error):  # a full disk: no other logger would do better
                raise
            print(f"{type(logger).__name__}: could not start ({type(error).__name__}: {' '.join(str(error).split())}); left out")
    return running


def demo_of(name: str) -> DemoLogger:
    return next((demo for demo in DEMO_LOGGERS.values() if demo.shows == name), DemoLogger(name))


def digit_grid(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """16 test digits titled 'predicted (true)', as one HxWx3 uint8 picture every logger can take."""
    figure, axes = plt.subplots(2, 8, figsize=(8, 2.4), layout="tight")
    for ax, image, label, guess in zip(axes.flat, images, labels, predicted):
        ax.imshow(image.squeeze(0) * MNIST_STD + MNIST_MEAN, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{guess} ({label})", color="black" if guess == label else "red", fontsize=9)
        ax.axis("off")
    figure.canvas.draw()
    picture = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return picture


# %% [markdown]
# ## Reading the logs back
# CSVLogger's `metrics.csv`, where step rows and epoch rows interleave, read back into one row per epoch.

# %% Reading the logs back
def epoch_history_with_steps(metrics_csv: Path) -> pd.DataFrame:
    """One row per epoch (each epoch's last *_epoch and valid_* values, and its last step); test_* rows are left out."""
    metrics = pd.read_csv(metrics_csv)
    per_epoch = sorted((c for c in metrics.columns if c not in ("epoch", "step") and not c.endswith("_step")
                        and not c.startswith("test_")), key=lambda c: ("acc" in c, c))  # losses first, then accuracies
    table = metrics.dropna(subset=per_epoch, how="all").groupby("epoch").agg({**{c: "last" for c in per_epoch}, "step": "max"})
    return table.rename(index=int, columns=lambda c: c.removesuffix("_epoch"))


# %% [markdown]
# ## Data
# MNIST as normalized tensors, decoded once, and a train/validation split that the seed fixes in every process.

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
# ## Main
# What a shell run and the last cell (with the parameters cell's `ARGS`) run; below it, the plumbing.

# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir)
    before = file_times(out)  # to tell this run's outputs from an earlier run's
    if args.named_modules or args.named_parameters:
        print_structure(MNISTClassifier(), args.named_modules, args.named_parameters)
        return 0
    if args.info or not args.demo:
        show_logger_catalogue(out)
    if not args.demo:
        print("to log a training run to several of them at once: python loggers_lightning.py --demo (--help: its flags)")
        return 0

    pl.seed_everything(args.seed, workers=True, verbose=False)
    check_flags_fit_the_data(args, prepare_mnist(args.data_dir))
    check_multi_node(args.num_nodes)
    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                            lr=args.lr, val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
    with exit_on_error("cannot build the Trainer from these flags"):
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes,
            precision=args.precision, max_epochs=args.epochs, enable_checkpointing=False, default_root_dir=out,
            logger=build_loggers(args.loggers, out), log_every_n_steps=args.log_every_n_steps, deterministic=True,
            fast_dev_run=args.fast_dev_run, limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches, limit_test_batches=args.limit_test_batches)
    with exit_if_interrupted(trainer), exit_if_write_fails(out):  # logs: one line on a full disk
        trainer.loggers = loggers = started(trainer.loggers)  # after the Trainer took the flags: a bad one leaves no run
        print("logging to: " + ", ".join(type(logger).__name__ for logger in loggers))
        trainer.fit(model)
    with exit_if_write_fails(out):
        test_metrics = trainer.test(model, verbose=False)[0]

    if trainer.is_global_zero:
        if not args.fast_dev_run:  # fast_dev_run swaps the loggers for a dummy that writes nothing
            metrics_csv = Path(loggers[0].log_dir, "metrics.csv")
            history = epoch_history_with_steps(metrics_csv)
            print(f"\nPer-epoch table from {metrics_csv}:\n" + history.to_string(float_format="{:.4f}".format))
            write_atomically(out / "history.csv", history.to_csv)
            plot_history_with_steps(pd.read_csv(metrics_csv), history, out)
            print("\nWhat each logger got (hyperparameters, scalars on step and on epoch, the digit grid):")
            for logger in loggers:
                demo = demo_of(type(logger).__name__)
                print(f"  {type(logger).__name__:18s} image: {demo.image_shows_in:48s} in {demo.where(logger)}")
            for logger in loggers:
                if isinstance(logger, TensorBoardLogger):
                    print(f"\nOpen TensorBoard on this run:  tensorboard --logdir {Path(logger.root_dir).resolve()}")
                if isinstance(logger, MLFlowLogger):
                    print(f"Open the MLflow UI (pip install mlflow):  mlflow ui --backend-store-uri "
                          f"{logger.experiment.tracking_uri}")
        print(f"\ntest accuracy: {test_metrics['test_acc']:.4f}")
        if args.save_model:
            save_atomically(model.model.state_dict(), out / f"{MODEL_FILE}.pt")
        print_outputs(out, before)

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Log one MNIST run to CSV, TensorBoard and MLflow together, then read the logs back.",
                                     formatter_class=DefaultsHelpFormatter)
    parser.error = die  # every bad flag value: one line, exit 2
    add = parser.add_argument_group("without --demo: the catalogue, or the model's structure").add_argument
    add("--output_dir", "--output-dir", type=output_folder, default="outputs/loggers_lightning", help="where outputs go")
    add("--info", action="store_true", help="write loggers_info/ (the default without --demo)")
    add("--named_modules", "--named-modules", action="store_true", help="print the modules and exit")
    add("--named_parameters", "--named-parameters", action="store_true", help="print the parameters and exit")
    add = parser.add_argument_group("the training demo (its hardware and debugging flags go to pl.Trainer)").add_argument
    add("--demo", action="store_true", help="train MNIST and log the run to the loggers of --loggers")
    add("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
        help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    add("--val_size", "--val-size", type=number(int, min=1), default=5000, help="training images held out for validation")
    add("--num_workers", "--num-workers", type=number(int, min=0), default=0, help="DataLoader worker processes")
    add("--batch_size", "--batch-size", type=number(int, min=1), default=128, metavar="N", help="training batch size")
    add("--eval_batch_size", "--eval-batch-size", "--test_batch_size", "--test-batch-size", type=number(int, min=1),
        metavar="N", help="validation and test batch size (default: --batch_size)")
    add("--epochs", type=number(int, min=1), default=2, metavar="N", help="training epochs")
    add("--lr", type=number(float, above=0), default=0.01, help="peak learning rate of the one-cycle schedule")
    add("--seed", type=number(int, min=0, max=2**32 - 1), default=42, help="seeds weights, split and shuffling")
    add("--save_model", "--save-model", action="store_true", help=f"save {MODEL_FILE}.pt (state_dict)")
    add("--loggers", type=logger_names, default=",".join(DEMO_LOGGERS), metavar="NAMES",
        help=f"comma-separated, from {', '.join(DEMO_LOGGERS)}; csv and tensorboard always run")
    add("--log_every_n_steps", "--log-every-n-steps", type=number(int, min=1), default=10, metavar="N",
        help="how often the *_step values are written")
    add("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    add("--devices", default="auto", help="how many devices, or which: 2, 0,1, auto")
    add("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ...")
    add("--num_nodes", "--num-nodes", type=number(int, min=1), default=1, help="machines for multi-node DDP")
    add("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, 64-true")
    add("--fast_dev_run", "--fast-dev-run", nargs="?", type=number(int, min=0), const=1, default=0, metavar="N",
        help="run N batches of each stage (1 when given alone), write no logs")
    for stage in ("train", "val", "test"):
        add(f"--limit_{stage}_batches", f"--limit-{stage}-batches", type=batch_count, default=1.0, metavar="N|F",
            help=f"{stage} batches per epoch: a count, or a fraction")
    add = parser.add_argument_group("flags of the original Lightning 1.x tutorial, still accepted").add_argument
    add("--no-cuda", "--no_cuda", action=OriginalTutorialFlag, nargs=0, dest="accelerator", const="cpu",
        note="it is --accelerator cpu now")
    add("--test", action=OriginalTutorialFlag, nargs=0, note="no effect: the demo always ends with a test")
    add("--gamma", action=OriginalTutorialFlag, type=float, note="no effect: the learning rate follows a one-cycle schedule")
    add("--log-interval", "--log_interval", action=OriginalTutorialFlag, type=number(int, min=1), metavar="N",
        successor="log_every_n_steps", note="it is --log_every_n_steps now")
    add("--load_model", "--load-model", metavar="PATH", type=existing_file, help="refused: tests no saved weights")
    args = parser.parse_args(argv)
    if args.load_model:
        die(f"--load_model {args.load_model}: this script trains to show loggers and tests no saved weights; "
            f"test them with: python Basic_usage_of_lightning.py --load_model {args.load_model}")
    if not args.demo:  # the catalogue: a training flag would be silently ignored, so say so
        defaults = parser.parse_args([], argparse.Namespace(output_dir=args.output_dir))
        if ignored := [f"--{name}" for name, value in vars(args).items() if value != getattr(defaults, name)
                       and name not in ("info", "named_modules", "named_parameters")]:
            die(f"{', '.join(ignored)}: for the training demo only; add --demo (without it the script writes the catalogue)")
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    return args


def logger_names(text: str) -> list:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if unknown := [name for name in names if name not in DEMO_LOGGERS]:
        raise argparse.ArgumentTypeError(f"unknown logger name(s) {', '.join(unknown)}; valid names: {', '.join(DEMO_LOGGERS)}")
    return names


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
def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: {'is a folder, not a file' if Path(text).is_dir() else 'no such file'}")
    return text


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
def show_logger_catalogue(out: Path) -> None:
    demo = {logger.shows: name for name, logger in DEMO_LOGGERS.items()}
    rows = [f"{'logger':18s} {'--loggers':12s} {'backend':56s} summary"]
    for name in pl_loggers.__all__:
        summary = first_paragraph(getattr(pl_loggers, name)).split(". ")[0].rstrip(".")
        rows.append(f"{name:18s} {demo.get(name, '-'):12s} {backend_status(name):56s} {summary}.")
    table = "\n".join(rows)
    pages = {f"{name}.txt": logger_page(name) for name in pl_loggers.__all__}
    folder = write_text_files(out / "loggers_info", {"AVAILABLE.txt": f"Loggers in pytorch_lightning {pl.__version__} "
                              f"(loggers.__all__) and whether their backend is installed here\n\n{table}\n", **pages})
    print(f"{table}\n\nwrote AVAILABLE.txt and {len(pages)} logger files to {folder.resolve()}")


def logger_page(name: str) -> str:
    cls = getattr(pl_loggers, name)
    own = [member for member in vars(cls) if not member.startswith("_") and not member.isupper()]
    return "\n".join([
        name, "=" * len(name), f"from pytorch_lightning.loggers import {name}   (defined in {cls.__module__})",
        f"Backend: {backend_status(name)}", "", "What it does", indented(first_paragraph(cls)), "", "Signature",
        textwrap.indent(signature_of(cls), "  "), "", "Methods and properties it defines",
        indented(", ".join(own) or "(none of its own)"), "",
        f"Full documentation: python -c \"help('pytorch_lightning.loggers.{name}')\"", ""])


def backend_status(class_name: str) -> str:
    demo = demo_of(class_name)
    if class_name == "Logger":
        return "the base class: subclass it to write your own logger"
    if demo.build is None:
        return "unknown to this script: see its docstring"
    if demo.module is None:
        return "built in (needs nothing else)"
    if importlib.util.find_spec(demo.module) is None:
        return f"not installed ({demo.module}): {demo.install}"
    distributions = importlib.metadata.packages_distributions().get(demo.module, [demo.module])
    return "installed (" + ", ".join(f"{d} {importlib.metadata.version(d)}" for d in distributions) + ")"


# Copied from callbacks_lightning.py
def first_paragraph(cls) -> str:
    """The class's own docstring (or its __init__'s), else the nearest parent's, said so; never object's."""
    for owner in cls.__mro__[:-1]:
        doc = owner.__dict__.get("__doc__") or getattr(owner.__dict__.get("__init__"), "__doc__", None)
        if doc:
            summary = " ".join(plain(inspect.cleandoc(doc).split("\n\n")[0]).split())
            return summary if owner is cls else f"(inherited from {owner.__module__}.{owner.__qualname__}) {summary}"
    return "(no docstring)"


# Copied from callbacks_lightning.py
def plain(text: str) -> str:
    """Docstring reStructuredText to plain text: :class:`~a.b.C` -> C, `text <url>`_ -> text, ``x`` -> `x`."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda match: match.group(1).split(".")[-1], text)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`_+", r"\1", text)
    return text.replace("``", "`")


# Copied from callbacks_lightning.py
def signature_of(cls) -> str:
    parameters = [str(p) for p in inspect.signature(cls).parameters.values()]
    text = f"{cls.__name__}(\n" + "".join(f"    {p},\n" for p in parameters) + ")" if parameters else f"{cls.__name__}()"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text.replace("typing.", ""))  # same bytes every run


# Copied from callbacks_lightning.py
def indented(text: str) -> str:
    return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="  ")


# Copied from callbacks_lightning.py
def write_text_files(folder: Path, files: dict) -> Path:
    """Write {name: text} into folder, each through a hidden file renamed into place, and drop its other *.txt."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / f".{name}.partial").write_text(text)
            os.replace(folder / f".{name}.partial", folder / name)
        for stale in set(folder.glob("*.txt")) - {folder / name for name in files}:
            stale.unlink()
    except OSError as error:
        for partial in folder.glob(".*.partial"):
            partial.unlink()
        die(f"cannot write {folder}: {write_failure(error) or error} (every file already there is whole)")
    return folder


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


# Copied from Basic_usage_of_lightning.py
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


# Copied from Basic_usage_of_lightning.py
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


def plot_history_with_steps(metrics: pd.DataFrame, history: pd.DataFrame, out: Path) -> None:
    """loss.png: the step series and the epoch values on one step axis; acc.png: accuracy per epoch."""
    loss = plt.figure().gca()
    if "train_loss_step" in metrics:  # absent when --log_every_n_steps is larger than the run
        metrics.dropna(subset=["train_loss_step"]).plot(x="step", y="train_loss_step", color="lightgray", ax=loss)
    history.plot(x="step", y=["train_loss", "valid_loss"], marker="o", ax=loss, grid=True, xlabel="optimizer step",
                 ylabel="cross-entropy loss", title="MNIST: cross-entropy loss per optimizer step and per epoch")
    acc = history[["train_acc", "valid_acc"]].plot(marker="o", grid=True, title="MNIST: accuracy per epoch",
                                                   xlabel="epoch", ylabel="accuracy")
    acc.xaxis.get_major_locator().set_params(integer=True)  # whole epochs only
    for kind, ax in (("loss", loss), ("acc", acc)):
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
