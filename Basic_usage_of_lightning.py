"""
Title: Basic usage of PyTorch Lightning
Description: Train, validate, test and export an MNIST CNN with the Lightning 2.x Trainer.

What it teaches
    A plain `nn.Module` (the network) wrapped by a `LightningModule` (the training recipe):
    `forward` for inference, one `*_step` hook per stage, epoch-level work in
    `on_validation_epoch_end` / `on_test_epoch_end`, an optimizer with an LR scheduler,
    data loading inside the module (`setup` + `*_dataloader`), and the `Trainer` flags for
    devices, precision, debugging and profiling.

How to run
    python Basic_usage_of_lightning.py                           # 3 epochs, about 99.1% test accuracy
    python Basic_usage_of_lightning.py --data_dir ../shared/data # MNIST already on disk, offline
    python Basic_usage_of_lightning.py --epochs 15               # the classic 15-epoch table
    python Basic_usage_of_lightning.py --fast_dev_run            # one batch per stage, a smoke test
    python Basic_usage_of_lightning.py --accelerator cpu --devices 2 --strategy ddp
    python Basic_usage_of_lightning.py --save_model --export onnx
    python Basic_usage_of_lightning.py --load_model outputs/Basic_usage_of_lightning/mnist_classifier.pt

What it writes (under --output_dir, default outputs/Basic_usage_of_lightning)
    csv_logs/version_N/metrics.csv   every logged value (CSVLogger)
    tb_logs/version_N/               the same for TensorBoard: tensorboard --logdir outputs/Basic_usage_of_lightning/tb_logs
    checkpoints/best.ckpt            the epoch with the best valid_acc, used for the test
    history.csv, loss.png, acc.png   the per-epoch table and its curves
    mnist_classifier.pt              with --save_model: the plain nn.Module's state_dict
    mnist_classifier.onnx / .pt2     with --export onnx / --export pt2
"""

# %% Imports
import argparse
import contextlib
import io
import os
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
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import Accuracy, MeanMetric
from torchvision.datasets import MNIST

# The data are tensors in memory, so loader workers have nothing to speed up (see the README's
# data-pipeline benchmark); Lightning's hint about adding workers would only be noise here.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 calls a pytree check that torch 2.14 deprecates; nothing a user can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MODEL_FILE = "mnist_classifier"


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
        # Only plain types go in: checkpoints then load with torch.load(weights_only=True),
        # the default since torch 2.6 (an argparse.Namespace here would make loading fail).
        self.save_hyperparameters()
        self.model = MNISTConvNet(hidden_units, dropout)
        # One metric object per stage, so their running states never mix.
        self.train_loss = MeanMetric()  # the epoch's mean loss, weighted by batch size
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.valid_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc_per_digit = Accuracy(task="multiclass", num_classes=10, average=None)
        # For the model summary and the exports. Batch 2, so that torch.export keeps the batch
        # dimension dynamic (a size of 1 would be specialized away).
        self.example_input_array = torch.zeros(2, 1, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: images in, logits out. The *_step hooks below call this."""
        return self.model(x)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        # Only accumulate here; the epoch values are logged once, in on_train_epoch_end. A
        # self.log call costs about half a millisecond per step on a CPU, which on this small
        # network was most of what Lightning added to a plain loop (benchmarks/step_overhead.py).
        self.train_loss.update(loss.detach(), weight=len(labels))
        self.train_acc.update(logits, labels)
        return loss  # Lightning calls backward(), optimizer.step() and zero_grad() with it

    def on_train_epoch_end(self):
        # Logging the Metric objects lets Lightning compute them once, across all DDP processes,
        # and reset them for the next epoch. Runs after the epoch's validation, so the progress
        # bar shows the epoch's train_loss at the end of each epoch.
        self.log("train_loss", self.train_loss, prog_bar=True)
        self.log("train_acc", self.train_acc)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("valid_loss", F.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)
        self.valid_acc.update(logits, labels)

    def on_validation_epoch_end(self):
        # The 2.x home of what 1.x did in validation_epoch_end(outputs). As in on_train_epoch_end,
        # the metric has kept its state over every batch, and logging the Metric object does the rest.
        self.log("valid_acc", self.valid_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("test_loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.test_acc.update(logits, labels)
        self.test_acc_per_digit.update(logits, labels)

    def on_test_epoch_end(self):
        # Replaces 1.x test_epoch_end / test_end. A per-class result is a vector, which self.log
        # cannot take, so compute() (synced across processes) and keep it for the report.
        self.log("test_acc", self.test_acc)
        self.per_digit_accuracy = self.test_acc_per_digit.compute().tolist()
        self.test_acc_per_digit.reset()

    def predict_step(self, batch, batch_idx):
        images, labels = batch
        return self(images).argmax(dim=1), labels

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        # One-cycle: warm up, then anneal, once over the whole run; the Trainer knows how many
        # optimizer steps that is, for any --epochs, --limit_train_batches or --devices.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str):
        # Called on every process (each DDP rank) before the stage starts.
        if stage in ("fit", "validate"):
            full = mnist_tensors(self.hparams.data_dir, train=True)
            generator = torch.Generator().manual_seed(self.hparams.seed)  # same split every run
            sizes = [len(full) - self.hparams.val_size, self.hparams.val_size]
            self.train_set, self.valid_set = random_split(full, sizes, generator=generator)
        if stage in ("test", "predict"):
            self.test_set = mnist_tensors(self.hparams.data_dir, train=False)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.valid_set)

    def test_dataloader(self):
        return self._loader(self.test_set)

    def predict_dataloader(self):
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
    """The whole split as normalized float tensors, decoded once by torchvision.

    MNIST is 47 MB as uint8; converting it once is far cheaper than running
    ToTensor + Normalize on every sample of every epoch.
    """
    dataset = MNIST(data_dir, train=train, download=False)
    images = (dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)).unsqueeze(1)
    return TensorDataset(images, dataset.targets)


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    out = Path(args.output_dir)

    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, lr=args.lr,
                            val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
    if args.named_modules or args.named_parameters:
        print_structure(model, args.named_modules, args.named_parameters)
        return 0
    if args.load_model:
        load_weights(model, args.load_model)
    train = not (args.load_model or args.test)
    if args.val_size >= prepare_mnist(args.data_dir) and train:
        die(f"--val_size {args.val_size} leaves no training images; use a smaller --val_size")

    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best",
                                 monitor="valid_acc", mode="max", enable_version_counter=False)
    csv_logger = CSVLogger(out, name="csv_logs")
    try:
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
            num_nodes=args.num_nodes, precision=args.precision, max_epochs=args.epochs,
            logger=[csv_logger, TensorBoardLogger(out, name="tb_logs")], callbacks=[checkpoint],
            fast_dev_run=args.fast_dev_run, limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches, limit_test_batches=args.limit_test_batches,
            overfit_batches=args.overfit_batches, val_check_interval=args.val_check_interval,
            profiler=args.profiler, deterministic=True)
    except Exception as error:  # a flag combination this machine cannot run: --accelerator gpu without one, ...
        die(f"cannot build the Trainer from these flags: {str(error).splitlines()[0]}")

    if train:
        trainer.fit(model)
    # Test the best checkpoint when there is one (Lightning's own examples do the same);
    # otherwise the weights in memory: loaded with --load_model, fresh with --test.
    best = checkpoint.best_model_path if train else ""
    test_metrics = trainer.test(model, ckpt_path=best or None, verbose=False)[0]
    predictions = trainer.predict(model)

    if trainer.is_global_zero:  # under DDP every rank runs main(); only one reports and writes
        if train and not args.fast_dev_run:
            history = epoch_history(Path(csv_logger.log_dir, "metrics.csv"))
            print("\n" + history.to_string(float_format="{:.4f}".format))
            history.to_csv(out / "history.csv")
            plot_history(history, out)
        report_test(model, test_metrics, predictions)
        if args.save_model:
            torch.save(model.model.state_dict(), out / f"{MODEL_FILE}.pt")
        if args.export:
            export_model(model, out / MODEL_FILE, args.export)
        print(f"\nOutputs in {out.resolve()}:")
        for path in sorted(out.glob("*")):
            print(f"  {path.name}{'/' if path.is_dir() else ''}")

    # Close the process group ourselves: a DDP process that exits with it open can abort (134).
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def print_structure(model, modules: bool, parameters: bool) -> None:
    if modules:
        for name, module in model.named_modules():
            print(f"{name or '(LightningModule)':28s} {module.__class__.__name__}")
    if parameters:
        for name, parameter in model.named_parameters():
            print(f"{name:28s} {str(tuple(parameter.shape)):16s} {parameter.numel():>8d}")
        print(f"total trainable parameters: {sum(p.numel() for p in model.parameters()):,}")


def load_weights(model: MNISTClassifier, path: str) -> None:
    """Load a .pt state_dict of MNISTConvNet or a Lightning .ckpt into model.model."""
    try:
        # weights_only=True: tensors and plain containers only, no arbitrary code on load.
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        die(f"cannot read {path} ({error.__class__.__name__}); pass a .pt state_dict saved with "
            f"--save_model or a Lightning .ckpt")
    if isinstance(saved, dict) and "state_dict" in saved:  # a Lightning checkpoint
        saved = {k.removeprefix("model."): v for k, v in saved["state_dict"].items()
                 if k.startswith("model.")}
    try:
        model.model.load_state_dict(saved)
    except (RuntimeError, TypeError, AttributeError) as error:
        first_line = str(error).strip().splitlines()[0]
        die(f"{path} does not hold weights for MNISTConvNet ({first_line})")


def epoch_history(metrics_csv: Path) -> pd.DataFrame:
    """One row per epoch from CSVLogger's file, where train and valid values sit on separate rows."""
    metrics = pd.read_csv(metrics_csv)
    columns = [c for c in ("train_loss", "valid_loss", "train_acc", "valid_acc") if c in metrics]
    # last(): the end-of-epoch validation when --val_check_interval validates more often.
    return metrics.groupby("epoch")[columns].last().dropna(how="all")


def plot_history(history: pd.DataFrame, out: Path) -> None:
    for kind in ("loss", "acc"):
        columns = [c for c in (f"train_{kind}", f"valid_{kind}") if c in history]
        ax = history[columns].plot(marker="o", grid=True, title=f"MNIST {kind} per epoch")
        ax.set_xlabel("epoch")
        ax.figure.savefig(out / f"{kind}.png", dpi=100, bbox_inches="tight")
        plt.close(ax.figure)


def report_test(model, test_metrics, predictions) -> None:
    print(f"\ntest accuracy: {test_metrics['test_acc']:.4f}")
    print("per digit:   " + " ".join(f"{d}:{a:.3f}" for d, a in enumerate(model.per_digit_accuracy)))
    predicted, labels = predictions[0]
    print(f"first predictions {predicted[:12].tolist()}\n     true labels  {labels[:12].tolist()}")


def export_model(model: MNISTClassifier, stem: Path, kind: str) -> None:
    model = model.to("cpu").eval()
    if kind == "pt2":
        # torch.export is the successor of TorchScript (LightningModule.to_torchscript is
        # deprecated since Lightning 2.6.1). Load with torch.export.load(path).module().
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model, (model.example_input_array,),
                                      dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, f"{stem}.pt2")
        print(f"exported {stem}.pt2 (torch.export)")
        return
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter builds the graph with it)
    except ImportError:
        die("--export onnx needs the ONNX exporter: pip install onnx onnxscript onnxruntime")
    path = f"{stem}.onnx"
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every pass
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
    with torch.no_grad():
        torch_logits = model(images)
    agree = (onnx_logits.argmax(1) == torch_logits.argmax(1)).float().mean().item()
    max_diff = (onnx_logits - torch_logits).abs().max().item()
    print(f"onnxruntime vs PyTorch on 256 test images: {agree:.0%} same predictions, "
          f"max logit difference {max_diff:.2e}")


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
    data.add_argument("--output_dir", "--output-dir", default="outputs/Basic_usage_of_lightning", help="where logs, plots and models go")
    data.add_argument("--val_size", "--val-size", type=int, default=5000, help="training images held out for validation")
    data.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader worker processes")

    train = parser.add_argument_group("training")
    train.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    train.add_argument("--epochs", type=int, default=3, metavar="N")
    train.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the one-cycle schedule")
    train.add_argument("--seed", type=int, default=42, help="seeds weights, split and shuffling")

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
    debug.add_argument("--overfit_batches", "--overfit-batches", type=number, default=0.0, metavar="N|F",
                       help="train and validate on the same few batches: the model should reach ~100%%")
    debug.add_argument("--val_check_interval", "--val-check-interval", type=number, default=1.0, metavar="N|F",
                       help="validate every N training batches, or every fraction of an epoch")
    debug.add_argument("--profiler", choices=["simple", "advanced", "pytorch"], default=None,
                       help="print where the time went after fit")

    model = parser.add_argument_group("model files and inspection")
    model.add_argument("--save_model", "--save-model", action="store_true", help=f"save {MODEL_FILE}.pt (state_dict)")
    model.add_argument("--load_model", "--load-model", metavar="PATH",
                       help="test these weights (.pt from --save_model, or a .ckpt) instead of training")
    model.add_argument("--test", action="store_true",
                       help="skip training and test the model as it is (untrained: ~10%%, a sanity check)")
    model.add_argument("--export", choices=["onnx", "pt2"], help="export the model after training or loading")
    model.add_argument("--named_modules", "--named-modules", action="store_true", help="print the modules and exit")
    model.add_argument("--named_parameters", "--named-parameters", action="store_true",
                       help="print every parameter's name and shape and exit")
    args = parser.parse_args(argv)

    for flag in ("epochs", "batch_size", "val_size", "num_nodes"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        die(f"--lr must be positive, got {args.lr}")
    if args.num_workers < 0:
        die(f"--num_workers cannot be negative, got {args.num_workers}")
    if args.load_model and not Path(args.load_model).is_file():
        die(f"--load_model {args.load_model}: no such file (save one with --save_model)")
    return args


if __name__ == "__main__":
    sys.exit(main())
