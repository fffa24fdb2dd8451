"""
Title: Load, inspect and test a Lightning checkpoint
Description: Pick a .ckpt, look inside it, load it safely with overrides and test it on MNIST.

What it teaches
    `Model.load_from_checkpoint(path, map_location="cpu", **overrides)`, a classmethod that
    returns a new model (called on an instance it raises); what a `.ckpt` holds (epoch,
    global_step, hyper_parameters, weights, optimizer, scheduler, callback and loop states);
    loading the weights into a plain `nn.Module` with `torch.load(weights_only=True)`, no
    Lightning needed; why `weights_only=True` is the safe default; and refusing bad files
    (missing, empty, truncated, not a checkpoint, another model) with one clear line.

How to run
    python check_point_save.py && python check_point_load.py     # the best-accuracy checkpoint
    python check_point_load.py --pick best_loss                  # or last: --pick last
    python check_point_load.py --ckpt_dir outputs/check_point_save/checkpoints --pick best_acc
    python check_point_load.py --ckpt outputs/check_point_save/checkpoints/last.ckpt --save_model
    python check_point_load.py --ckpt outputs/check_point_load/mnist_classifier.pt  # a plain state_dict
    python check_point_load.py --data_dir ../shared/data --batch_size 1000   # overrides at load time

What it writes (under --output_dir, default outputs/check_point_load)
    predictions.png             a grid of test digits with their true and predicted labels
    csv_logs/version_N/         the test metrics (CSVLogger)
    mnist_classifier.pt         with --save_model: the plain nn.Module's state_dict
"""

# %% Imports
import argparse
import contextlib
import inspect
import io
import os
import re
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; no display is needed
import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Accuracy
from torchvision.datasets import MNIST

# The data are tensors in memory, so loader workers have nothing to speed up (see the README's
# data-pipeline benchmark); Lightning's hint about adding workers would only be noise here.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 calls a pytree check that torch 2.14 deprecates; nothing a user can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MODEL_FILE = "mnist_classifier"
DEFAULT_CKPT_DIR = "outputs/check_point_save/checkpoints"
# --pick: the metric in the file names that check_point_save.py writes, and which end is best.
PICKS = {"best_loss": ("valid_loss", min), "best_acc": ("valid_acc", max)}


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
    """The module check_point_save.py trains, reduced to what testing needs.

    A checkpoint stores the __init__ arguments (hyper_parameters) and the weights under
    attribute names (model.features.0.weight, ...), not the code: any class with the same
    arguments and the same attribute names loads it. The training hooks are not needed here.
    """

    def __init__(self, data_dir: str = "data", batch_size: int = 128, lr: float = 0.01,
                 hidden_units: int = 128, dropout: float = 0.25, val_size: int = 5000,
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

    def setup(self, stage: str):
        self.test_set = mnist_tensors(self.hparams.data_dir, train=False)

    def test_dataloader(self):
        workers = self.hparams.num_workers
        return DataLoader(self.test_set, batch_size=self.hparams.batch_size,
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


# %% Checkpoint files
def find_checkpoint(args) -> Path:
    """--ckpt PATH as given, or the file --pick chooses in --ckpt_dir."""
    if args.ckpt:
        path = Path(args.ckpt)
        if path.is_dir():
            die(f"--ckpt {path} is a folder; pass a file, or --ckpt_dir {path} --pick best_acc")
        if not path.is_file():
            die(f"--ckpt {path}: no such file")
        return path
    folder = Path(args.ckpt_dir or DEFAULT_CKPT_DIR)
    if not folder.is_dir():
        die(f"--ckpt_dir {folder}: no such folder; train first (python check_point_save.py) or pass --ckpt")
    files = sorted(folder.glob("*.ckpt"))  # sorted: by epoch, since the names start with it
    if not files:
        die(f"{folder} holds no .ckpt files; train first (python check_point_save.py) or pass --ckpt")
    names = ", ".join(path.name for path in files[:6]) + (", ..." if len(files) > 6 else "")
    if args.pick == "last":
        if not (folder / "last.ckpt").is_file():
            die(f"--pick last: no last.ckpt in {folder} (it holds {names}); pick best_loss or best_acc")
        return folder / "last.ckpt"
    metric, best = PICKS[args.pick]
    scores = {path: float(match.group(1)) for path in files
              if (match := re.search(rf"{metric}=(\d+\.\d+)\.ckpt$", path.name))}
    if not scores:
        die(f"--pick {args.pick}: no file in {folder} has {metric} in its name (like "
            f"epoch=03-{metric}=0.1234.ckpt); it holds {names}")
    # Ties go to the earlier epoch, as in ModelCheckpoint.
    return best(scores, key=scores.get)


def read_checkpoint(path: Path, trust: bool) -> dict:
    """torch.load the file, or exit with one line that says what is wrong with it.

    weights_only=True (torch's default since 2.6) rebuilds tensors and plain containers
    only. weights_only=False runs the full pickle machinery, which can call any function
    the file names: only for files you made yourself.
    """
    if path.stat().st_size == 0:
        die(f"{path} is empty (0 bytes), probably left by an interrupted copy; use another checkpoint")
    try:
        with warnings.catch_warnings():
            # Random bytes can look like a pickle header; torch warns about it before failing.
            warnings.filterwarnings("ignore", ".*Detected pickle protocol.*")
            loaded = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as error:  # torch.load raises many types for bad files; all mean "unreadable"
        unsafe = re.search(r"GLOBAL (\S+)", str(error))
        if unsafe:
            die(f"{path} holds a Python object ({unsafe.group(1)}) that weights_only=True refuses, "
                f"since unpickling it can run any code; only if you made the file yourself, "
                f"load it with --trust_checkpoint")
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":  # torch.save writes a zip archive: this one is cut or corrupt
                die(f"{path} is truncated or damaged (an incomplete zip archive); use another checkpoint")
        die(f"{path} is not a PyTorch checkpoint ({error.__class__.__name__}); pass a .ckpt "
            f"from check_point_save.py or a .pt state_dict")
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        return loaded
    if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        # A bare .pt state_dict: accepted on purpose, as weights without anything else.
        return {"state_dict": loaded}
    kind = f"a dict with keys {list(loaded)[:4]}" if isinstance(loaded, dict) else f"a {type(loaded).__name__}"
    die(f"{path} is not a checkpoint: it holds {kind}, neither a Lightning checkpoint (with "
        f"'state_dict') nor a state_dict of tensors")


def network_weights(path: Path, checkpoint: dict, hparams: dict) -> dict:
    """The MNISTConvNet weights in the file, checked name by name and shape by shape."""
    weights, prefix = checkpoint["state_dict"], ""
    if all(name.startswith("model.") for name in weights):  # a LightningModule's names
        weights, prefix = {name.removeprefix("model."): tensor for name, tensor in weights.items()}, "model."
    expected = MNISTConvNet(hparams.get("hidden_units", 128)).state_dict()
    missing = [prefix + name for name in expected if name not in weights]
    unexpected = [prefix + name for name in weights if name not in expected]
    if missing or unexpected:
        die(f"{path} holds a different model: the file has {', '.join(unexpected[:3]) or 'nothing'} that "
            f"MNISTConvNet does not, and lacks {', '.join(missing[:3]) or 'nothing'}")
    for name, tensor in expected.items():
        if weights[name].shape != tensor.shape:
            die(f"{path} holds a different model: layer {prefix}{name} has shape {list(weights[name].shape)} "
                f"in the file but {list(tensor.shape)} in MNISTConvNet(hidden_units="
                f"{hparams.get('hidden_units', 128)})")
    return weights


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
        group = optimizer["param_groups"][0]
        print(f"  {'optimizer_states':26s} lr {group['lr']:.2e}, betas {group.get('betas')}, "
              f"moments for {len(optimizer['state'])} tensors")
    for scheduler in checkpoint["lr_schedulers"]:
        print(f"  {'lr_schedulers':26s} step {scheduler.get('last_epoch')} of {scheduler.get('total_steps', '?')}")
    for name, state in checkpoint["callbacks"].items():
        if "best_model_path" in state:  # a ModelCheckpoint: what it had kept when this file was written
            kept = [Path(kept_path).name for kept_path in state.get("best_k_models", {})]
            summary = f"best_model_path {Path(state['best_model_path']).name or '-'}, best_k_models {kept}"
        else:
            summary = ", ".join(state)
        print(f"  {'callbacks':26s} {name}: {summary}")
    print(f"  {'loops':26s} {', '.join(checkpoint['loops'])}")


def show_classmethod_pitfall(path: Path) -> None:
    model = MNISTClassifier()
    try:
        # Looks as if it fills `model`; a classmethod can only build and return a new one.
        model.load_from_checkpoint(path)
    except TypeError as error:
        print(f"\nmodel.load_from_checkpoint(path) on an instance raises TypeError: {error}\n"
              f"  (Lightning 1.x returned a new model and left `model` untouched, untrained.)\n"
              f"  Right: model = MNISTClassifier.load_from_checkpoint(path)")


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    out = Path(args.output_dir)

    # Everything about the file is checked before anything is written.
    path = find_checkpoint(args)
    checkpoint = read_checkpoint(path, args.trust_checkpoint)
    saved_hparams = checkpoint.get("hyper_parameters") or {}
    old_style = isinstance(saved_hparams, argparse.Namespace)  # the 1.x habit; loads only when trusted
    if old_style:
        saved_hparams = vars(saved_hparams)
    weights = network_weights(path, checkpoint, saved_hparams)
    # The saved data_dir is the training machine's; batch size and workers are this machine's choice.
    overrides = dict(data_dir=args.data_dir, batch_size=args.batch_size, num_workers=args.num_workers)
    lightning_file = "epoch" in checkpoint and not old_style
    if lightning_file:
        try:
            model = MNISTClassifier.load_from_checkpoint(path, map_location="cpu",
                                                         weights_only=not args.trust_checkpoint, **overrides)
        except (TypeError, ValueError, KeyError, RuntimeError) as error:  # e.g. a hyperparameter of the wrong type
            die(f"{path}: MNISTClassifier.load_from_checkpoint failed ({str(error).strip().splitlines()[0]})")
    else:
        # A .pt state_dict has no hyper_parameters, and load_from_checkpoint cannot apply overrides
        # to a Namespace: build the model from what there is, then load the weights into it.
        accepted = inspect.signature(MNISTClassifier).parameters
        model = MNISTClassifier(**{k: v for k, v in saved_hparams.items() if k in accepted} | overrides)
        model.model.load_state_dict(weights)

    if rank_zero_only.rank == 0:  # under DDP every rank runs main(); only one reports
        print(f"Checkpoint: {path.resolve()}")
        if "epoch" in checkpoint:
            describe(path, checkpoint)
        if lightning_file:
            print(f"\nmodel = MNISTClassifier.load_from_checkpoint(path, map_location='cpu', "
                  f"{', '.join(f'{k}={v!r}' for k, v in overrides.items())})\n  hparams now: {dict(model.hparams)}")
            show_classmethod_pitfall(path)
        else:
            print(f"\nbuilt by hand: MNISTClassifier(**{dict(model.hparams)}), then model.model.load_state_dict(weights)")
    prepare_mnist(args.data_dir)

    try:
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
            num_nodes=args.num_nodes, precision=args.precision, logger=CSVLogger(out, name="csv_logs"),
            enable_checkpointing=False, fast_dev_run=args.fast_dev_run,
            limit_test_batches=args.limit_test_batches)
    except (ValueError, RuntimeError) as error:  # e.g. --accelerator gpu on a machine without one
        die(f"cannot build the Trainer: {error}")
    test_metrics = trainer.test(model, verbose=False)[0]

    if trainer.is_global_zero:  # under DDP every rank runs main(); only one reports and writes
        print(f"\ntest accuracy: {test_metrics['test_acc']:.4f}")
        images, labels = mnist_tensors(args.data_dir, train=False)[:args.num_images]
        model = model.to("cpu").eval()
        with torch.no_grad():
            logits = model(images)
        print(f"first predictions {logits.argmax(1).tolist()}\n     true labels  {labels.tolist()}")
        plot_predictions(images, labels, logits.argmax(1), out / "predictions.png")

        # Lightning checkpoints work without Lightning: torch.load gives a dict whose "state_dict"
        # holds the tensors under the LightningModule's names ("model." + the nn.Module's names).
        network = MNISTConvNet(saved_hparams.get("hidden_units", 128), saved_hparams.get("dropout", 0.25))
        network.load_state_dict(weights)
        with torch.no_grad():
            difference = (network.eval()(images) - logits).abs().max().item()
        print(f"\nplain MNISTConvNet with the file's weights, no Lightning involved: "
              f"max logit difference {difference:.1e}")
        if args.save_model:
            torch.save(network.state_dict(), out / f"{MODEL_FILE}.pt")
        print(f"\nOutputs in {out.resolve()}:")
        for written in sorted(out.glob("*")):
            print(f"  {written.name}{'/' if written.is_dir() else ''}")

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def plot_predictions(images, labels, predicted, path: Path) -> None:
    columns = 8
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label, guess in zip(axes.flat, images, labels, predicted):
        ax.imshow(image.squeeze(0), cmap="gray")
        ax.set_title(f"true {label}\npred {guess}", fontsize=9, color="black" if label == guess else "red")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


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
    ckpt = parser.add_argument_group("which checkpoint")
    ckpt.add_argument("--ckpt", metavar="PATH", help="a .ckpt file (or a .pt state_dict); overrides --ckpt_dir")
    ckpt.add_argument("--ckpt_dir", "--ckpt-dir", metavar="DIR",
                      help=f"a folder of check_point_save.py checkpoints (default {DEFAULT_CKPT_DIR})")
    ckpt.add_argument("--pick", choices=["best_loss", "best_acc", "last"], default="best_acc",
                      help="which file of --ckpt_dir: lowest valid_loss or highest valid_acc in the name, or last.ckpt")
    ckpt.add_argument("--trust_checkpoint", "--trust-checkpoint", action="store_true",
                      help="load with weights_only=False, which can run code from the file: only files you made")
    ckpt.add_argument("--num_images", "--num-images", type=int, default=16, metavar="N",
                      help="test digits to predict and draw")
    ckpt.add_argument("--save_model", "--save-model", action="store_true", help=f"save {MODEL_FILE}.pt (state_dict)")

    data = parser.add_argument_group("data and outputs (data_dir, batch_size and num_workers override the saved ones)")
    data.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                      help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    data.add_argument("--output_dir", "--output-dir", default="outputs/check_point_load", help="where the outputs go")
    data.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    data.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader worker processes")
    data.add_argument("--seed", type=int, default=42, help="seeds everything (testing draws nothing random)")

    unused = parser.add_argument_group("training flags every script takes; nothing is trained here, so unused")
    unused.add_argument("--epochs", type=int, default=3, metavar="N")
    unused.add_argument("--lr", type=float, default=0.01)
    unused.add_argument("--val_size", "--val-size", type=int, default=5000,
                        help="the split comes from the checkpoint's hyper_parameters")

    hardware = parser.add_argument_group("hardware (passed to pl.Trainer)")
    hardware.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    hardware.add_argument("--devices", type=devices, default="auto", help="how many devices, or which: 2, 0,1, auto")
    hardware.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ...")
    hardware.add_argument("--num_nodes", "--num-nodes", type=int, default=1, help="machines for multi-node DDP")
    hardware.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, 64-true")

    debug = parser.add_argument_group("debugging (passed to pl.Trainer)")
    debug.add_argument("--fast_dev_run", "--fast-dev-run", nargs="?", type=int, const=1, default=0, metavar="N",
                       help="test on N batches (1 when given alone)")
    for stage in ("train", "val", "test"):
        debug.add_argument(f"--limit_{stage}_batches", f"--limit-{stage}-batches", type=number, default=1.0,
                           metavar="N|F", help=f"{stage} batches: a count, or a fraction"
                           + ("" if stage == "test" else " (unused: only the test runs here)"))
    args = parser.parse_args(argv)

    for flag in ("batch_size", "num_nodes", "num_images"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.num_workers < 0:
        die(f"--num_workers cannot be negative, got {args.num_workers}")
    if args.ckpt and args.ckpt_dir:
        die("pass --ckpt PATH or --ckpt_dir DIR, not both")
    return args


if __name__ == "__main__":
    sys.exit(main())
