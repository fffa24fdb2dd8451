"""
Title: Lightning loggers: a catalogue and several loggers at once
Description: Log one MNIST run to CSV, TensorBoard and MLflow together, then read the logs back.

What it teaches
    `self.log` sends every value to every logger in `Trainer(logger=[...])`. --info describes each
    logger Lightning ships and whether its backend is installed here. The demo logs hyperparameters,
    scalars per step and per epoch, and a grid of test digits (with each logger's own image API)
    to CSVLogger, TensorBoardLogger and, when mlflow is installed, MLFlowLogger with a local file
    store; loggers whose package is missing are reported with the pip command that enables them.
    Then it reads metrics.csv, where step rows and epoch rows interleave, into a per-epoch table.

How to run
    python loggers_lightning.py --info                               # loggers_info/, one file per logger
    python loggers_lightning.py --data_dir ../shared/data            # the demo, 2 epochs
    python loggers_lightning.py --loggers mlflow --epochs 1          # only the optional logger(s) named
    tensorboard --logdir outputs/loggers_lightning/tb_logs           # then open http://localhost:6006

What it writes (under --output_dir, default outputs/loggers_lightning)
    loggers_info/AVAILABLE.txt       with --info: every logger, its backend package, installed or not
    loggers_info/<Name>.txt          with --info: signature, summary and methods of each logger
    csv_logs/version_N/              metrics.csv (every logged value) and hparams.yaml
    tb_logs/version_N/               TensorBoard events: scalars, hyperparameters, the digit grid
    mlruns/                          MLflow file store: params, metrics, artifacts/test_digits.png
    history.csv, loss.png, acc.png   the per-epoch table read from metrics.csv, and its curves
"""

# %% Imports
import argparse
import contextlib
import importlib.metadata
import importlib.util
import inspect
import io
import os
import re
import sys
import textwrap
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; no display is needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import pytorch_lightning.loggers as pl_loggers
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import (CometLogger, CSVLogger, LitLogger, MLFlowLogger, TensorBoardLogger,
                                       WandbLogger)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import Accuracy
from torchvision.datasets import MNIST

# The data are tensors in memory, so loader workers have nothing to speed up (see the README's
# data-pipeline benchmark); Lightning's hint about adding workers would only be noise here.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 calls a pytree check that torch 2.14 deprecates; nothing a user can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGE_NAME = "test_digits"


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
        return self.classifier(self.features(x))


# %% LightningModule
class MNISTClassifier(pl.LightningModule):
    """The training recipe. Everything it logs goes to every logger of the Trainer."""

    def __init__(self, data_dir: str = "data", batch_size: int = 128, lr: float = 0.01,
                 val_size: int = 5000, num_workers: int = 0, seed: int = 42):
        super().__init__()
        # The loggers receive these as hyperparameters: hparams.yaml, TensorBoard's HPARAMS tab, MLflow params.
        self.save_hyperparameters()
        self.model = MNISTConvNet()
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.valid_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)
        self.image_results = {}

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
            self.image_results[type(logger).__name__] = log_image(logger, IMAGE_NAME, grid, self.global_step)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str):
        if stage in ("fit", "validate"):
            full = mnist_tensors(self.hparams.data_dir, train=True)
            generator = torch.Generator().manual_seed(self.hparams.seed)  # same split every run
            sizes = [len(full) - self.hparams.val_size, self.hparams.val_size]
            self.train_set, self.valid_set = random_split(full, sizes, generator=generator)
        if stage == "test":
            self.test_set = mnist_tensors(self.hparams.data_dir, train=False)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.valid_set)

    def test_dataloader(self):
        return self._loader(self.test_set)

    def _loader(self, dataset, shuffle=False):
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=workers, persistent_workers=workers > 0)


# %% Loggers
# --loggers name: (logger class, the module its backend needs, the command that installs it).
LOGGERS = {
    "csv": ("CSVLogger", None, None),
    "tensorboard": ("TensorBoardLogger", "tensorboard", "pip install tensorboard"),
    "mlflow": ("MLFlowLogger", "mlflow", "pip install mlflow-skinny"),
    "wandb": ("WandbLogger", "wandb", "pip install wandb"),
    "comet": ("CometLogger", "comet_ml", "pip install comet-ml"),
    "litlogger": ("LitLogger", "litlogger", "pip install litlogger"),
}
ALWAYS = ("csv", "tensorboard")  # the per-epoch table and the TensorBoard instructions read these


def make_logger(name: str, out: Path):
    if name == "csv":
        return CSVLogger(out, name="csv_logs")
    if name == "tensorboard":
        # No placeholder hp_metric (-1): the HPARAMS tab shows the hyperparameters next to the real metrics.
        return TensorBoardLogger(out, name="tb_logs", default_hp_metric=False)
    if name == "mlflow":
        # mlflow 3.x keeps the file store in maintenance mode and refuses it unless this is set; it
        # needs no server and no database. A database store (tracking_uri="sqlite:///mlflow.db")
        # needs the full `pip install mlflow` (SQLAlchemy), which mlflow-skinny leaves out.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return MLFlowLogger(experiment_name="loggers_lightning", tracking_uri=f"file:{(out / 'mlruns').resolve()}")
    if name == "wandb":
        return WandbLogger(project="loggers_lightning", save_dir=out, offline=True)  # `wandb sync` uploads later
    if name == "comet":
        return CometLogger(project="loggers_lightning", online=False, offline_directory=str(out / "comet"))
    return LitLogger(root_dir=out / "litlogger", name="loggers_lightning")  # needs a lightning.ai login


def build_loggers(names: list, out: Path) -> list:
    """The loggers that can run here; a missing or failing optional backend is reported and skipped."""
    loggers = []
    for name in dict.fromkeys([*ALWAYS, *names]):
        class_name, module, install = LOGGERS[name]
        if module and importlib.util.find_spec(module) is None:
            print(f"{class_name}: not installed here ({module} is missing); enable it with: {install}")
            continue
        try:
            logger = make_logger(name, out)
            logger.experiment  # start it now, so a backend that cannot start fails here and not mid-training
        except Exception as error:  # noqa: BLE001 (third-party backends fail in their own ways)
            reason = " ".join(str(error).split())
            print(f"{class_name}: could not start ({type(error).__name__}: {reason}); continuing without it")
            continue
        loggers.append(logger)
    return loggers


def where_it_wrote(logger) -> str:
    if isinstance(logger, MLFlowLogger):
        return f"{Path(logger.save_dir, logger.experiment_id, logger.run_id)}/ (params/, metrics/, artifacts/)"
    if isinstance(logger, WandbLogger):
        return f"{logger.save_dir}/wandb/ (offline run; upload with: wandb sync)"
    return str(getattr(logger, "log_dir", None) or logger.save_dir)


def digit_grid(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """16 test digits titled 'predicted (true)', as one HxWx3 uint8 picture every logger can take."""
    figure, axes = plt.subplots(2, 8, figsize=(8, 2.4))
    for ax, image, label, guess in zip(axes.flat, images, labels, predicted):
        ax.imshow(image.squeeze(0) * MNIST_STD + MNIST_MEAN, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{guess} ({label})", color="black" if guess == label else "red", fontsize=9)
        ax.axis("off")
    figure.tight_layout()
    figure.canvas.draw()
    picture = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return picture


def log_image(logger, name: str, picture: np.ndarray, step: int) -> str:
    """Log an HxWx3 uint8 picture with the logger's own API; say where it went."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(name, picture, step, dataformats="HWC")
        return "IMAGES tab"
    if isinstance(logger, MLFlowLogger):
        logger.experiment.log_image(logger.run_id, picture, artifact_file=f"{name}.png")
        return f"artifact {name}.png"
    if isinstance(logger, WandbLogger):
        logger.log_image(key=name, images=[picture], step=step)
        return "media panel"
    if isinstance(logger, CometLogger):
        logger.experiment.log_image(picture, name=name, step=step)
        return "Graphics tab"
    return "not supported (scalars and hyperparameters only)"


# %% Catalogue
def plain(text: str) -> str:
    """Docstring reStructuredText to plain text: :class:`~a.b.C` -> C, `text <url>`_ -> text, ``x`` -> `x`."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda match: match.group(1).split(".")[-1], text)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`_+", r"\1", text)
    return text.replace("``", "`")


def first_paragraph(cls) -> str:
    doc = cls.__dict__.get("__doc__") or cls.__dict__.get("__init__", object).__doc__ or "(no docstring)"
    return " ".join(plain(inspect.cleandoc(doc).split("\n\n")[0]).split())


def backend_status(class_name: str) -> str:
    entry = next((entry for entry in LOGGERS.values() if entry[0] == class_name), None)
    if class_name == "Logger":
        return "the base class: subclass it to write your own logger"
    if entry is None:
        return "unknown to this script: see its docstring"
    _, module, install = entry
    if module is None:
        return "built in (needs nothing else)"
    if importlib.util.find_spec(module) is None:
        return f"not installed ({module}): {install}"
    distributions = importlib.metadata.packages_distributions().get(module, [module])
    return "installed (" + ", ".join(f"{d} {importlib.metadata.version(d)}" for d in distributions) + ")"


def catalogue_table() -> str:
    demo = {class_name: name for name, (class_name, _, _) in LOGGERS.items()}
    rows = [f"{'logger':18s} {'--loggers':12s} {'backend':56s} summary"]
    for name in pl_loggers.__all__:
        cls = getattr(pl_loggers, name)
        summary = first_paragraph(cls).split(". ")[0].rstrip(".")
        rows.append(f"{name:18s} {demo.get(name, '-'):12s} {backend_status(name):56s} {summary}.")
    return "\n".join(rows)


def logger_page(name: str) -> str:
    cls = getattr(pl_loggers, name)
    parameters = [str(p) for p in inspect.signature(cls).parameters.values()]
    signature = f"{name}(\n" + "".join(f"    {p},\n" for p in parameters) + ")" if parameters else f"{name}()"
    signature = re.sub(r" at 0x[0-9a-fA-F]+", "", signature.replace("typing.", ""))  # same bytes every run
    own = [member for member in vars(cls) if not member.startswith("_") and not member.isupper()]
    wrap = lambda text: textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="  ")  # noqa: E731
    return "\n".join([
        name, "=" * len(name), f"from pytorch_lightning.loggers import {name}   (defined in {cls.__module__})",
        f"Backend: {backend_status(name)}", "", "What it does", wrap(first_paragraph(cls)), "", "Signature",
        "\n".join("  " + line for line in signature.splitlines()), "",
        "Methods and properties it defines", wrap(", ".join(own) or "(none of its own)"), "",
        f"Full documentation: python -c \"help('pytorch_lightning.loggers.{name}')\"", ""])


def write_catalogue(folder: Path) -> Path:
    """AVAILABLE.txt and one <Name>.txt per logger, rewritten from scratch: a rerun gives the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.txt"):
        old.unlink()
    (folder / "AVAILABLE.txt").write_text(
        f"Loggers in pytorch_lightning {pl.__version__} (pytorch_lightning.loggers.__all__) and whether "
        f"their backend is installed here\n\n{catalogue_table()}\n")
    for name in pl_loggers.__all__:
        (folder / f"{name}.txt").write_text(logger_page(name))
    return folder


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


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir)
    if args.info:
        folder = write_catalogue(out / "loggers_info")
        print(catalogue_table())
        print(f"\nwrote AVAILABLE.txt and {len(pl_loggers.__all__)} logger files to {folder.resolve()}")
        return 0

    pl.seed_everything(args.seed, workers=True, verbose=False)
    if args.val_size >= prepare_mnist(args.data_dir):
        die(f"--val_size {args.val_size} leaves no training images; use a smaller --val_size")
    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, lr=args.lr,
                            val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
    loggers = build_loggers(args.loggers, out)
    print("logging to: " + ", ".join(type(logger).__name__ for logger in loggers))
    try:
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
            num_nodes=args.num_nodes, precision=args.precision, max_epochs=args.epochs,
            logger=loggers, log_every_n_steps=args.log_every_n_steps, enable_checkpointing=False,
            fast_dev_run=args.fast_dev_run, limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches, limit_test_batches=args.limit_test_batches,
            default_root_dir=out, deterministic=True)
    except (ValueError, RuntimeError) as error:  # e.g. --accelerator gpu on a machine without one
        die(f"cannot build the Trainer: {error}")
    trainer.fit(model)
    test_metrics = trainer.test(model, verbose=False)[0]

    if trainer.is_global_zero:
        if not args.fast_dev_run:  # fast_dev_run swaps the loggers for a dummy that writes nothing
            metrics_csv = Path(loggers[0].log_dir, "metrics.csv")
            history = epoch_table(metrics_csv)
            print(f"\nPer-epoch table from {metrics_csv}:\n" + history.to_string(float_format="{:.4f}".format))
            history.to_csv(out / "history.csv")
            plot_curves(pd.read_csv(metrics_csv), history, out)
            print("\nWhat each logger got (hyperparameters, scalars on step and on epoch, the digit grid):")
            for logger in loggers:
                image = model.image_results.get(type(logger).__name__, "-")
                print(f"  {type(logger).__name__:18s} image: {image:48s} in {where_it_wrote(logger)}")
            for logger in loggers:
                if isinstance(logger, TensorBoardLogger):
                    print(f"\nOpen TensorBoard on this run:  tensorboard --logdir {Path(logger.root_dir).resolve()}")
                if isinstance(logger, MLFlowLogger):
                    print(f"Open the MLflow UI (pip install mlflow):  MLFLOW_ALLOW_FILE_STORE=true mlflow ui "
                          f"--backend-store-uri file:{Path(logger.save_dir).resolve()}")
        print(f"\ntest accuracy: {test_metrics['test_acc']:.4f}")
        print(f"\nOutputs in {out.resolve()}:")
        for path in sorted(out.glob("*")):
            print(f"  {path.name}{'/' if path.is_dir() else ''}")

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def epoch_table(metrics_csv: Path) -> pd.DataFrame:
    """One row per epoch from CSVLogger's metrics.csv.

    The file has one row per logging call: step rows (every log_every_n_steps) fill the *_step
    columns, epoch-end rows fill the *_epoch and validation columns, and every other cell is empty
    (NaN). Keep the per-epoch columns, take each one's last value in its epoch, and drop the
    *_epoch suffix. Test rows (test_*) belong to no training epoch and are left out.
    """
    metrics = pd.read_csv(metrics_csv)
    per_epoch = sorted((c for c in metrics.columns
                        if c not in ("epoch", "step") and not c.endswith("_step") and not c.startswith("test_")),
                       key=lambda c: ("acc" in c, c))  # losses first, then accuracies
    rows = metrics.dropna(subset=per_epoch, how="all")
    table = rows.groupby("epoch").agg({**{c: "last" for c in per_epoch}, "step": "max"})  # last skips NaN
    table.index = table.index.astype(int)
    return table.rename(columns=lambda c: c.removesuffix("_epoch"))


def plot_curves(metrics: pd.DataFrame, history: pd.DataFrame, out: Path) -> None:
    """loss.png: the step series and the epoch values on one step axis; acc.png: accuracy per epoch."""
    steps = metrics.dropna(subset=["train_loss_step"])
    ax = steps.plot(x="step", y="train_loss_step", color="lightgray", label="train_loss (step)", grid=True)
    history.plot(x="step", y=["train_loss", "valid_loss"], marker="o", ax=ax, title="MNIST loss")
    ax.set_xlabel("optimizer step")
    ax.figure.savefig(out / "loss.png", dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
    ax = history[["train_acc", "valid_acc"]].plot(marker="o", grid=True, title="MNIST accuracy per epoch")
    ax.set_xlabel("epoch")
    ax.figure.savefig(out / "acc.png", dpi=100, bbox_inches="tight")
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
    data.add_argument("--output_dir", "--output-dir", default="outputs/loggers_lightning",
                      help="where the catalogue, logs and plots go")
    data.add_argument("--val_size", "--val-size", type=int, default=5000, help="training images held out for validation")
    data.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader worker processes")

    train = parser.add_argument_group("training")
    train.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    train.add_argument("--epochs", type=int, default=2, metavar="N")
    train.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the one-cycle schedule")
    train.add_argument("--seed", type=int, default=42, help="seeds weights, split and shuffling")

    logging = parser.add_argument_group("loggers")
    logging.add_argument("--info", action="store_true", help="write loggers_info/ (one file per logger) and exit")
    logging.add_argument("--loggers", default=",".join(LOGGERS), metavar="NAMES",
                         help=f"comma-separated, from {', '.join(LOGGERS)}; csv and tensorboard always run "
                              f"(the table and the TensorBoard check read them)")
    logging.add_argument("--log_every_n_steps", "--log-every-n-steps", type=int, default=10, metavar="N",
                         help="how often the *_step values are written")

    hardware = parser.add_argument_group("hardware (passed to pl.Trainer)")
    hardware.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    hardware.add_argument("--devices", type=devices, default="auto", help="how many devices, or which: 2, 0,1, auto")
    hardware.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ...")
    hardware.add_argument("--num_nodes", "--num-nodes", type=int, default=1, help="machines for multi-node DDP")
    hardware.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, 64-true")

    debug = parser.add_argument_group("debugging (passed to pl.Trainer)")
    debug.add_argument("--fast_dev_run", "--fast-dev-run", nargs="?", type=int, const=1, default=0, metavar="N",
                       help="run N batches of each stage (1 when given alone), write no logs")
    for stage in ("train", "val", "test"):
        debug.add_argument(f"--limit_{stage}_batches", f"--limit-{stage}-batches", type=number, default=1.0,
                           metavar="N|F", help=f"{stage} batches per epoch: a count, or a fraction")
    args = parser.parse_args(argv)

    args.loggers = [name.strip() for name in args.loggers.split(",") if name.strip()]
    unknown = [name for name in args.loggers if name not in LOGGERS]
    if unknown:
        die(f"unknown logger name(s) in --loggers: {', '.join(unknown)}; valid names: {', '.join(LOGGERS)}")
    for flag in ("epochs", "batch_size", "val_size", "num_nodes", "log_every_n_steps"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        die(f"--lr must be positive, got {args.lr}")
    if args.num_workers < 0:
        die(f"--num_workers cannot be negative, got {args.num_workers}")
    return args


if __name__ == "__main__":
    sys.exit(main())
