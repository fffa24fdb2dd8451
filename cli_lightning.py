# %% [markdown]
# # LightningCLI: the same training driven by config files
# Fit, validate, test and predict MNIST from YAML configs and dotted flags, with LightningCLI.
#
# ## What it teaches
# LightningCLI makes the `__init__` arguments of the LightningModule (`model.*`), the DataModule (`data.*`) and
# the Trainer (`trainer.*`) into flags and YAML keys, with no argparse code: subcommands per Trainer method,
# callbacks and loggers by `class_path`, `--print_config`, `link_arguments`, and the `config.yaml` that repeats
# a run. The network, module and data are `Basic_usage_of_lightning.py`'s, unchanged.
# ## How to run
# ```bash
# python cli_lightning.py fit                                       # Basic's defaults: 3 epochs, then a test of the best epoch
# python cli_lightning.py fit --data.data_dir /path/to/datasets     # MNIST already on disk (MNIST/raw), offline
# python cli_lightning.py fit --config configs/cli_callbacks_loggers.yaml   # + EarlyStopping, LearningRateMonitor, loggers
# python cli_lightning.py fit --print_config > my_config.yaml       # every key and its value, ready to edit
# python cli_lightning.py test --ckpt_path outputs/cli_lightning/lightning_logs/version_0/checkpoints/best.ckpt
# ```
# ## What it writes (under --trainer.default_root_dir, default outputs/cli_lightning)
# ```text
# lightning_logs/version_N/config.yaml           the run's full config: fit --config it to repeat the run
# lightning_logs/version_N/checkpoints/best.ckpt the epoch with the best valid_acc, tested at the end of fit
# lightning_logs/version_N/events.out.tfevents.* TensorBoard: tensorboard --logdir outputs/cli_lightning/lightning_logs
# ```

# %% Parameters tags=["parameters"]
ARGS = ["fit"]  # a notebook run's subcommand and flags, as on the command line (e.g. ["fit", "--trainer.max_epochs", "1"])

# %% Imports
import contextlib
import io
import math
import os
import re
import struct
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import Accuracy, MeanMetric
from torchvision.datasets import MNIST

# Copied from Basic_usage_of_lightning.py
IN_NOTEBOOK = "get_ipython" in globals()  # Jupyter, VS Code cells, Colab: IPython defines it

# Notes that teach nothing here: add workers (the data are in memory), a torch 2.14 deprecation inside Lightning,
# and that a notebook passes ARGS while sys.argv holds the kernel's own flags (which the CLI never reads).
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
warnings.filterwarnings("ignore", ".*LightningCLI's args parameter is intended to run from within Python.*")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# %% [markdown]
# ## Model
# The network of `Basic_usage_of_lightning.py`, unchanged: a plain `nn.Module`, 1x28x28 image in, 10 class logits out.

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
# Basic's training recipe, unchanged: its `__init__` arguments become the `model.*` keys of the CLI.

# %% LightningModule
# Copied from Basic_usage_of_lightning.py
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
# MNIST as normalized tensors in memory, the seeded train/validation split, and Basic's `MNISTDataModule`,
# unchanged: its `__init__` arguments become the `data.*` keys, and it feeds every subcommand.

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


# Copied from Basic_usage_of_lightning.py
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
# ## The CLI
# `LightningCLI(MNISTClassifier, MNISTDataModule)`, plus what the other scripts do around fit: linked
# data keys, one seed, a best-checkpoint callback by default, and a test of the best epoch after fit.

# %% The CLI
class MNISTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The DataModule feeds every subcommand, but MNISTClassifier takes (and its checkpoints record) the data
        # arguments too: each is linked from data.*, so model.batch_size cannot disagree with data.batch_size.
        for key in ("data_dir", "batch_size", "eval_batch_size", "val_size", "num_workers"):
            parser.link_arguments(f"data.{key}", f"model.{key}")
        for target in ("data.seed", "model.seed"):  # one seed, as Basic's --seed: weights, shuffling and split
            parser.link_arguments("seed_everything", target)
        parser.set_defaults({
            "data.data_dir": os.environ.get("PATH_DATASETS", "data"),
            # A default, not a fixed callback: a config's trainer.callbacks replaces this list.
            "trainer.callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"monitor": "valid_acc", "mode": "max", "filename": "best"}}],
        })

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        check_config(self.config[self.config.subcommand])  # values the type hints let through

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        try:  # e.g. an accelerator this machine lacks: one line, not a traceback
            return super().instantiate_trainer(**kwargs)
        except Exception as error:
            die(f"cannot build the Trainer from these trainer.* keys: {str(error).strip().splitlines()[0]}")

    def after_fit(self) -> None:
        # Test the epoch with the best valid_acc, as the other scripts do (a later `test` cannot know which was best).
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        metrics = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        if self.trainer.is_global_zero:
            print(f"\ntest accuracy: {metrics[0]['test_acc']:.4f} (of {best or 'the weights in memory'})")

    def after_predict(self) -> None:
        predicted, labels = self.trainer.predict_loop.predictions[0]  # what predict_step returned
        if self.trainer.is_global_zero:
            print(f"first predictions {predicted[:12].tolist()}\n     true labels  {labels[:12].tolist()}")


# %% [markdown]
# ## Main
# What the command line runs, and the last cell with the parameters cell's `ARGS`. Then error messages, checks.

# %% Main
def main(argv=None) -> int:
    check_config_files(sys.argv[1:] if argv is None else argv)
    with exit_if_schedule_ends():
        MNISTCLI(MNISTClassifier, MNISTDataModule, args=argv, parser_class=OneLineErrorParser,
                 seed_everything_default=42,  # LightningCLI's own default, True, draws a random seed
                 # Basic_usage_of_lightning.py's defaults; every one can be changed by a flag or a config.
                 trainer_defaults={"max_epochs": 3, "deterministic": True, "default_root_dir": "outputs/cli_lightning"})
    return 0


# %% Flags
class OneLineErrorParser(LightningArgumentParser):
    """jsonargparse's errors as one line: `error: <what is wrong>` and the help to read, exit 2."""

    def error(self, message: str, ex: Exception = None):
        if not self.exit_on_error:  # jsonargparse is trying alternatives; it catches this itself
            return super().error(message, ex)
        die(f"{clearer(' '.join(message.split()))} (see: {self.prog.replace(' [options]', '')} --help)")


def clearer(message: str) -> str:
    """What is wrong, from a jsonargparse message (which, for a Union, lists every type it tried: a paragraph)."""
    key = re.match(r'Parser key "([^"]+)": ', message)
    bad_class = re.search(r"Problem with given class_path '([^']+)': (.+?)(?: - |$)", message)
    expected = [kind or choices for kind, choices in
                re.findall(r"Expected a (?:<class '(\w+)'>|typing\.Literal\[(.*?)\])(?= - | Given|\. Got)", message)]
    given = re.search(r"(?:Given|Got) value: (.*)$", message)
    if key and bad_class:
        return (f"{key[1]}: cannot import class_path {bad_class[1]} ({bad_class[2].strip()}); "
                f"give a full import path such as pytorch_lightning.callbacks.EarlyStopping")
    if key and expected and given:
        return f"{key[1]}: expected {' or '.join(expected).replace('NoneType', 'null')}; got {given[1]}"
    return message


def check_config_files(argv: list) -> None:
    """A --config file that is not valid YAML: name the file and the line (jsonargparse does not)."""
    paths = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in ("-c", "--config")]
    paths += [word.split("=", 1)[1] for word in argv if word.startswith("--config=")]
    for path in paths:
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            die(f"--config {path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}")
        except OSError:
            pass  # a missing file: jsonargparse names it


@contextlib.contextmanager
def exit_if_schedule_ends():
    """fit --ckpt_path with more steps than the checkpoint's run: its one-cycle schedule has no more."""
    try:
        yield
    except ValueError as error:
        if not str(error).startswith("Tried to step"):
            raise
        die(f"the checkpoint's one-cycle schedule has ended ({error}); resume with the trainer.max_epochs "
            f"and trainer.limit_train_batches of the run that wrote it")


def check_config(config) -> None:
    """What the type hints let through but would end in a traceback later: one line, exit 2."""
    for key in ("batch_size", "eval_batch_size", "val_size", "num_workers"):
        if config.data[key] < (0 if key == "num_workers" else 1):
            die(f"data.{key} cannot be {config.data[key]}; it must be at least {0 if key == 'num_workers' else 1}")
    ckpt_path = config.get("ckpt_path")
    if ckpt_path == "best":
        die("ckpt_path best means the best checkpoint of this process's fit, and this process has not "
            "fitted; pass the file, e.g. --ckpt_path outputs/cli_lightning/lightning_logs/version_0/checkpoints/best.ckpt")
    if ckpt_path and ckpt_path not in ("last", "hpc", "registry"):
        if not Path(ckpt_path).is_file():
            die(f"ckpt_path {ckpt_path}: no such file; pass a .ckpt that fit wrote (lightning_logs/version_N/checkpoints/)")
        try:
            torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as error:
            die(f"ckpt_path {ckpt_path} is not a readable Lightning checkpoint ({error.__class__.__name__}); "
                f"pass a .ckpt that fit wrote")
    if config.data.val_size >= prepare_mnist(config.data.data_dir, flag="--data.data_dir"):
        die(f"data.val_size {config.data.val_size} leaves no training images; use a smaller data.val_size")


# %% Helpers
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
