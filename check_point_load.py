# %% [markdown]
# # Load, inspect and test a Lightning checkpoint
# Pick a .ckpt, look inside it, load it safely with overrides and test it on MNIST.
#
# ## What it teaches
# `Model.load_from_checkpoint(path, map_location="cpu", **overrides)`, a classmethod that returns a new model;
# what a `.ckpt` holds; its weights in a plain `nn.Module` via `torch.load(weights_only=True)`, no Lightning
# needed; why `weights_only=True` is the safe default; refusing bad files with one clear line.
# ## How to run
# ```bash
# python check_point_save.py && python check_point_load.py   # the best-accuracy checkpoint
# python check_point_load.py --pick best_loss --save_model   # or --pick last, or --ckpt PATH (a .ckpt or a .pt)
# ```
# ## What it writes (under --output_dir, default outputs/check_point_load)
# ```text
# predictions.png, csv_logs/version_N/   test digits with true and predicted labels; the test metrics
# mnist_classifier.pt                    with --save_model: the plain nn.Module's state_dict
# ```

# %% Parameters tags=["parameters"]
ARGS = []  # a notebook run's flags, as on the command line (e.g. ["--epochs", "1"]); a shell run reads its own

# %% Imports
import argparse
import contextlib
import errno
import inspect
import io
import logging
import math
import os
import re
import struct
import sys
import warnings
from pathlib import Path

import matplotlib

# Copied from Basic_usage_of_lightning.py
IN_NOTEBOOK = "get_ipython" in globals()  # Jupyter, VS Code cells, Colab: IPython defines it
if not IN_NOTEBOOK:
    matplotlib.use("Agg")  # a shell run draws into files; no display is needed
import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Accuracy
from torchvision.datasets import MNIST

# Noise: add workers (the test set is in memory), a deprecation inside Lightning, limits left at 1.0, a cloud tip.
for noise in (".*does not have many workers.*", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*"):
    warnings.filterwarnings("ignore", noise)
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: not any(note in record.getMessage() for note in ("=1.0)` was configured", "Tip: For seamless")))

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MODEL_FILE = "mnist_classifier"
DEFAULT_CKPT_DIR = "outputs/check_point_save/checkpoints"  # where check_point_save.py writes them


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
# `check_point_save.py`'s module, minus training: a checkpoint holds `__init__` arguments and named weights, not code.

# %% LightningModule
class MNISTClassifier(pl.LightningModule):
    def __init__(self, data_dir: str = "data", batch_size: int = 128, eval_batch_size: int = 128,
                 lr: float = 0.01, hidden_units: int = 128, dropout: float = 0.25, val_size: int = 5000,
                 num_workers: int = 0, seed: int = 42):
        super().__init__()
        self.save_hyperparameters()
        self.model = MNISTConvNet(hidden_units, dropout)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def test_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("test_loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.test_acc.update(logits, labels)

    def on_test_epoch_end(self):
        self.log("test_acc", self.test_acc)

    def test_dataloader(self):
        test_set, workers = mnist_tensors(self.hparams.data_dir, train=False), self.hparams.num_workers
        return DataLoader(test_set, batch_size=self.hparams.eval_batch_size, num_workers=workers,
                          persistent_workers=workers > 0)


# %% [markdown]
# ## Loading a checkpoint
# `MNISTClassifier.load_from_checkpoint(path, **overrides)` returns a new model; a plain `nn.Module` takes the weights.

# %% Loading a checkpoint
def load_model(path: Path, checkpoint: dict, weights: dict, overrides: dict, trust: bool) -> MNISTClassifier:
    """The file as an MNISTClassifier ready to test, with `overrides` replacing saved arguments."""
    if is_lightning_checkpoint(checkpoint):
        # A classmethod: a new model from the saved hyper_parameters (overrides win); map_location: no GPU needed.
        return MNISTClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=not trust, **overrides)
    # A .pt state_dict has no hyper_parameters, and load_from_checkpoint cannot apply overrides to a 1.x file's
    # argparse.Namespace: build the model from what there is, then load the weights.
    saved = checkpoint.get("hyper_parameters") or {}
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    accepted = inspect.signature(MNISTClassifier).parameters
    model = MNISTClassifier(**{k: v for k, v in saved.items() if k in accepted} | overrides)
    model.model.load_state_dict(weights)
    return model


def is_lightning_checkpoint(checkpoint: dict) -> bool:
    """Written by Lightning, with plain hyper_parameters (the 1.x habit was an argparse.Namespace)."""
    return "epoch" in checkpoint and not isinstance(checkpoint.get("hyper_parameters"), argparse.Namespace)


def describe(path: Path, checkpoint: dict) -> None:
    """Print what a checkpoint holds: it is a plain dict, nothing more."""
    print(f"\nWhat is inside {path.name} ({path.stat().st_size / 1e6:.1f} MB), a plain dict:")
    for key in ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters"):
        print(f"  {key:26s} {checkpoint.get(key, '(not in this file)')}")
    weights = checkpoint["state_dict"]
    print(f"  {'state_dict':26s} {len(weights)} tensors, {sum(t.numel() for t in weights.values()):,} "
          f"numbers: {', '.join(list(weights)[:3])}, ...")
    if "optimizer_states" not in checkpoint:
        print(f"  {'optimizer_states':26s} (not in this file: weights only, so it cannot resume training)")
        return
    for optimizer in checkpoint["optimizer_states"]:
        print(f"  {'optimizer_states':26s} lr {optimizer['param_groups'][0]['lr']:.2e}, betas "
              f"{optimizer['param_groups'][0].get('betas')}, moments for {len(optimizer['state'])} tensors")
    for scheduler in checkpoint["lr_schedulers"]:
        print(f"  {'lr_schedulers':26s} step {scheduler.get('last_epoch')} of {scheduler.get('total_steps', '?')}")
    for name, state in checkpoint["callbacks"].items():
        summary = ", ".join(state)
        if "best_model_path" in state:  # a ModelCheckpoint: what it had kept when this file was written
            kept = [Path(kept_path).name for kept_path in state.get("best_k_models", {})]
            summary = f"best_model_path {Path(state['best_model_path']).name or '-'}, best_k_models {kept}"
        print(f"  {'callbacks':26s} {name}: {summary}")
    print(f"  {'loops':26s} {', '.join(checkpoint['loops'])}")


def show_classmethod_pitfall(path: Path) -> None:
    try:  # looks as if it fills the model; a classmethod can only build and return a new one
        MNISTClassifier().load_from_checkpoint(path)
    except TypeError as error:
        print(f"\nmodel.load_from_checkpoint(path) on an instance raises TypeError: {error}\n  (Lightning 1.x returned "
              f"a new model and left `model` untrained.)\n  Right: model = MNISTClassifier.load_from_checkpoint(path)")


# %% [markdown]
# ## Data
# The whole split as normalized float tensors, decoded once by torchvision.

# %% Data
# Copied from Basic_usage_of_lightning.py
def mnist_tensors(data_dir: str, train: bool) -> TensorDataset:
    """The whole split, normalized once: far cheaper than ToTensor + Normalize per sample per epoch."""
    dataset = MNIST(data_dir, train=train, download=False)
    images = (dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)).unsqueeze(1)
    return TensorDataset(images, dataset.targets)


# %% [markdown]
# ## Main
# What the command line runs (a notebook: with the parameters cell's `ARGS`); below it, flags, checks and helpers.

# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    out = Path(args.output_dir)
    before = file_times(out)  # to tell this run's outputs from an earlier run's
    with exit_on_error("cannot build the Trainer from these flags"):
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes,
            precision=args.precision, logger=CSVLogger(out, name="csv_logs"), enable_checkpointing=False,
            fast_dev_run=args.fast_dev_run, limit_test_batches=args.limit_test_batches)

    # Everything about the file and the data is checked (Helpers) before anything is written.
    path = find_checkpoint(args)
    checkpoint = read_checkpoint(path, args.trust_checkpoint)
    weights = network_weights(path, checkpoint)
    # The saved data_dir is the training machine's; batch sizes and workers are this machine's choice.
    overrides = {name: getattr(args, name) for name in ("data_dir", "batch_size", "eval_batch_size", "num_workers")}
    with exit_on_error(f"{path}: MNISTClassifier could not load it"):  # e.g. a hyperparameter of the wrong type
        model = load_model(path, checkpoint, weights, overrides, args.trust_checkpoint)
    if args.named_modules or args.named_parameters:
        print_structure(model, args.named_modules, args.named_parameters)
        return 0
    check_flags_fit_the_test_set(args, prepare_mnist(args.data_dir))

    if trainer.is_global_zero:  # under DDP every rank runs main(); only one reports
        print(f"Checkpoint: {path.resolve()}")
        if "epoch" in checkpoint:
            describe(path, checkpoint)
        if is_lightning_checkpoint(checkpoint):
            print(f"\nmodel = MNISTClassifier.load_from_checkpoint(path, map_location='cpu', "
                  f"{', '.join(f'{k}={v!r}' for k, v in overrides.items())})\n  hparams now: {dict(model.hparams)}")
            show_classmethod_pitfall(path)
        else:
            print(f"\nbuilt by hand: MNISTClassifier(**{dict(model.hparams)}), then model.model.load_state_dict(weights)")
    with exit_if_log_write_fails(out):
        test_metrics = trainer.test(model, verbose=False)[0]
    if trainer.is_global_zero:  # under DDP every rank runs main(); only one reports and writes
        print(f"\ntest accuracy: {test_metrics['test_acc']:.4f}")
        images, labels = mnist_tensors(args.data_dir, train=False)[:args.num_images]
        # No Lightning needed: "state_dict" holds the tensors as "model." + the nn.Module's names (prefix stripped).
        network = MNISTConvNet(model.hparams.hidden_units, model.hparams.dropout)
        network.load_state_dict(weights)
        with torch.no_grad():
            logits = model.to("cpu").eval()(images)
            difference = (network.eval()(images) - logits).abs().max().item()
        print(f"first predictions {logits.argmax(1).tolist()}\n     true labels  {labels.tolist()}")
        plot_predictions(images, labels, logits.argmax(1), out / "predictions.png")
        print(f"\nplain MNISTConvNet with the file's weights, no Lightning involved: max logit difference {difference:.1e}")
        if args.save_model:
            write_atomically(out / f"{MODEL_FILE}.pt", lambda file: torch.save(network.state_dict(), file))
        print_outputs(out, before)
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # else DDP may abort (134)
        torch.distributed.destroy_process_group()
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter, description=(
        "Pick a .ckpt, look inside it, load it safely with overrides and test it on MNIST."))
    parser.error = die  # every bad flag value: one line, exit 2
    add = parser.add_argument_group("which checkpoint").add_argument
    add("--ckpt", metavar="PATH", type=existing_file, help="a .ckpt file (or a .pt state_dict) instead of --ckpt_dir")
    add("--ckpt_dir", "--ckpt-dir", metavar="DIR", help=f"check_point_save.py's checkpoints (default {DEFAULT_CKPT_DIR})")
    add("--pick", choices=["best_loss", "best_acc", "last"], default="best_acc", help="the --ckpt_dir file to load")
    add("--trust_checkpoint", "--trust-checkpoint", action="store_true",
        help="load with weights_only=False, which can run code from the file: only files you made")
    add = parser.add_argument_group("data and outputs (override the saved data_dir, batch sizes, workers)").add_argument
    add("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
        help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    add("--output_dir", "--output-dir", type=output_folder, default="outputs/check_point_load", help="where the outputs go")
    add("--batch_size", "--batch-size", type=number(int, min=1), default=128, metavar="N", help="kept in hparams only")
    add("--eval_batch_size", "--eval-batch-size", "--test_batch_size", "--test-batch-size", type=number(int, min=1),
        metavar="N", help="test batch size (default: --batch_size)")
    add("--num_workers", "--num-workers", type=number(int, min=0), default=0, help="DataLoader worker processes")
    add("--seed", type=number(int, min=0, max=2**32 - 1), default=42, help="seeds everything (testing draws nothing random)")
    add("--num_images", "--num-images", type=number(int, min=1), default=16, metavar="N", help="test digits to predict and draw")
    add("--save_model", "--save-model", action="store_true", help=f"save {MODEL_FILE}.pt (state_dict)")
    add = parser.add_argument_group("hardware and debugging (passed to pl.Trainer)").add_argument
    add("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    add("--devices", default="auto", help="how many devices, or which: 2, 0,1, auto")
    add("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ...")
    add("--num_nodes", "--num-nodes", type=number(int, min=1), default=1, help="machines for multi-node DDP")
    add("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, 64-true")
    add("--fast_dev_run", "--fast-dev-run", nargs="?", type=number(int, min=0), const=1, default=0, metavar="N",
        help="test on N batches (1 when given alone)")
    add("--limit_test_batches", "--limit-test-batches", type=batch_count, default=1.0, metavar="N|F",
        help="test batches: a count, or a fraction")
    add = parser.add_argument_group("model inspection").add_argument
    add("--named_modules", "--named-modules", action="store_true", help="print the loaded model's modules and exit")
    add("--named_parameters", "--named-parameters", action="store_true", help="print its parameters and exit")
    add = parser.add_argument_group("flags of the original Lightning 1.x tutorial, still accepted").add_argument
    add("--no-cuda", "--no_cuda", action=OriginalTutorialFlag, nargs=0, dest="accelerator", const="cpu",
        note="it is --accelerator cpu now")
    add("--test", action=OriginalTutorialFlag, nargs=0, note="no effect: this script always tests the checkpoint it loads")
    add("--gamma", action=OriginalTutorialFlag, type=float, metavar="GAMMA", note="no effect: nothing is trained here")
    add("--log-interval", "--log_interval", action=OriginalTutorialFlag, type=number(int, min=1), metavar="N",
        note="no effect: nothing is trained here; the test metrics are logged once")
    add("--load_model", "--load-model", metavar="PATH", type=existing_file, help="the same as --ckpt")
    args = parser.parse_args(argv)
    if args.load_model and args.ckpt and args.ckpt != args.load_model:
        die("--load_model and --ckpt both name the checkpoint to load; pass one of them")
    if (args.ckpt or args.load_model) and args.ckpt_dir:
        die("pass --ckpt PATH or --ckpt_dir DIR, not both")
    args.ckpt = args.ckpt or args.load_model
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    return args


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


def find_checkpoint(args) -> Path:
    """--ckpt PATH as given, or the file --pick chooses in --ckpt_dir."""
    if args.ckpt:
        return Path(args.ckpt)
    folder = Path(args.ckpt_dir or DEFAULT_CKPT_DIR)
    if not (files := sorted(folder.glob("*.ckpt"))):  # sorted: by epoch, since the names start with it
        problem = " holds no .ckpt files" if folder.is_dir() else ": no such folder"
        die(f"--ckpt_dir {folder}{problem}; train first (python check_point_save.py) or pass --ckpt")
    names = ", ".join(path.name for path in files[:6]) + (", ..." if len(files) > 6 else "")
    if args.pick == "last":
        if not (folder / "last.ckpt").is_file():
            die(f"--pick last: no last.ckpt in {folder} (it holds {names}); pick best_loss or best_acc")
        return folder / "last.ckpt"
    # The metric in the names that check_point_save.py writes, and which end is best.
    metric, best = {"best_loss": ("valid_loss", min), "best_acc": ("valid_acc", max)}[args.pick]
    scores = {path: float(match.group(1)) for path in files
              if (match := re.search(rf"{metric}=(\d+\.\d+)\.ckpt$", path.name))}
    if not scores:
        die(f"--pick {args.pick}: no file in {folder} is named like epoch=03-{metric}=0.1234.ckpt; it holds {names}")
    return best(scores, key=scores.get)  # ties go to the earlier epoch, as in ModelCheckpoint


def read_checkpoint(path: Path, trust: bool) -> dict:
    """A Lightning checkpoint, or a bare .pt state_dict as {"state_dict": ...}; else one error line."""
    def tensors_by_name(weights: dict) -> bool:
        return all(isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in weights.items())
    loaded = load_checkpoint_file(path, not trust, "only if you made the file yourself, load it with --trust_checkpoint")
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        if not tensors_by_name(loaded["state_dict"]):
            die(f"{path}: its state_dict does not map layer names to tensors; use another checkpoint")
        return loaded
    if isinstance(loaded, dict) and loaded and tensors_by_name(loaded):
        return {"state_dict": loaded}  # a bare .pt state_dict: accepted on purpose, as weights without anything else
    kind = f"a dict with keys {list(loaded)[:4]}" if isinstance(loaded, dict) else f"a {type(loaded).__name__}"
    die(f"{path} is not a checkpoint: it holds {kind}, neither a Lightning checkpoint nor a state_dict of tensors")


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


def network_weights(path: Path, checkpoint: dict) -> dict:
    """The file's MNISTConvNet weights, checked after the hyperparameters that size it (no width of 1e9 or "abc")."""
    hparams = checkpoint.get("hyper_parameters") or {}
    hparams = vars(hparams) if isinstance(hparams, argparse.Namespace) else hparams
    if not isinstance(hparams, dict):
        die(f"{path}: its hyper_parameters are a {type(hparams).__name__}, not a dict; use another checkpoint")
    hidden_units, dropout = hparams.get("hidden_units", 128), hparams.get("dropout", 0.25)
    if type(hidden_units) is not int or not 1 <= hidden_units <= 65536:
        die(f"{path} gives hidden_units {hidden_units!r}; MNISTConvNet takes a whole number from 1 to 65536")
    if type(dropout) not in (int, float) or not 0 <= dropout < 1:
        die(f"{path} gives dropout {dropout!r}; MNISTConvNet takes a probability from 0 to below 1")
    weights, prefix = checkpoint["state_dict"], ""
    if all(name.startswith("model.") for name in weights):  # a LightningModule's names
        weights, prefix = {name.removeprefix("model."): tensor for name, tensor in weights.items()}, "model."
    expected = MNISTConvNet(hidden_units).state_dict()
    missing = [prefix + name for name in expected if name not in weights]
    unexpected = [prefix + name for name in weights if name not in expected]
    if missing or unexpected:
        die(f"{path} holds a different model: the file has {', '.join(unexpected[:3]) or 'nothing'} that "
            f"MNISTConvNet does not, and lacks {', '.join(missing[:3]) or 'nothing'}")
    for name, tensor in expected.items():
        if weights[name].shape != tensor.shape:
            die(f"{path} holds a different model: layer {prefix}{name} has shape {list(weights[name].shape)} "
                f"in the file but {list(tensor.shape)} in MNISTConvNet(hidden_units={hidden_units})")
    return weights


def plot_predictions(images, labels, predicted, path: Path) -> None:
    rows = math.ceil(len(images) / 8)  # 8 columns
    figure, axes = plt.subplots(rows, 8, figsize=(8 * 1.3, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label, guess in zip(axes.flat, images, labels, predicted):
        ax.imshow(image.squeeze(0), cmap="gray")
        ax.set_title(f"true {label}\npred {guess}", fontsize=9, color="black" if label == guess else "red")
    figure.tight_layout()
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=100))
    if IN_NOTEBOOK:
        plt.show()  # inline under the cell as well
    plt.close(figure)


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


def check_flags_fit_the_test_set(args, train_images: int) -> None:
    """Flags each valid alone that misfit the data: one line now, not a crash deep in torch later."""
    test_images = idx_length(Path(args.data_dir, "MNIST", "raw", MNIST_FILES[2]))
    if max(args.batch_size, args.eval_batch_size) > max(train_images, test_images):
        die(f"a batch of {max(args.batch_size, args.eval_batch_size)} is more than all {train_images} training "
            f"images; pass a --batch_size (and --eval_batch_size) of at most {train_images}")
    batches = math.ceil(test_images / args.eval_batch_size / args.num_nodes)  # each node tests its share
    if isinstance(args.limit_test_batches, float) and args.limit_test_batches * batches < 1 and not args.fast_dev_run:
        die(f"--limit_test_batches {args.limit_test_batches} of {batches} test batches is less than one batch; "
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


@contextlib.contextmanager
def exit_if_log_write_fails(out: Path):
    """The test metrics' CSV log under out cannot be written (a full disk): one line, exit 2."""
    try:
        yield
    except Exception as error:
        if not write_failure(error):
            raise
        die(f"cannot write under {out}: {write_failure(error)}")


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
