"""
Title: Quantization-aware training inside a LightningModule
Description: Fine-tune an MNIST CNN with fake int8 quantization under the Trainer, then convert it.

What it teaches
    Quantization-aware training (QAT) with PyTorch's own API, called from inside a LightningModule:
    `fuse_modules_qat` merges conv+bn+relu and linear+relu, `prepare_qat` adds fake-quantization
    (weights and activations rounded to int8 in the forward pass, gradients passed straight through),
    and the Trainer fine-tunes that model like any other. From --freeze_epoch on, the observers stop
    moving the int8 ranges and batch norm uses its running statistics, so the last epochs train the
    arithmetic the int8 model will run. After fit, `convert` gives the int8 network, which is tested
    with a plain loop and with `Trainer.test`, saved, reloaded and timed against the float model.

How to run
    python quant_lightning_qat.py                                # 3 float epochs, 2 QAT epochs, convert
    python quant_lightning_qat.py --data_dir ../shared/data      # MNIST already on disk, offline
    python quant_lightning_qat.py --ckpt outputs/quant_lightning_ptq/checkpoints/best.ckpt  # QAT only
    python quant_lightning_qat.py --qat_epochs 3 --freeze_epoch 2 --qat_lr 0.0005
    python quant_lightning_qat.py --load_int8 outputs/quant_lightning_qat/mnist_int8.pt   # reload, test

What it writes (under --output_dir, default outputs/quant_lightning_qat)
    csv_logs/version_N/, tb_logs/version_N/   one version per phase: the float run, then the QAT run
    checkpoints/best.ckpt                     the float phase's best epoch (the QAT phase keeps its last)
    history.csv, loss.png, acc.png            the per-epoch table of both phases and its curves
    mnist_fp32.pt, mnist_int8.pt              state_dicts of the float and the int8 network
    quant_results.csv                         one row appended per run: accuracy, size, latency
"""

# %% Imports
import argparse
import contextlib
import copy
import io
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; no display is needed
import matplotlib.pyplot as plt
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.quantization as tq
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import Accuracy
from torchvision.datasets import MNIST

# The data are tensors in memory, so loader workers have nothing to speed up.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 calls a pytree check that torch 2.14 deprecates; nothing a user can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# Eager quantization (torch.ao.quantization) is deprecated in favour of torchao (see the README), and torch
# repeats its six-line message from every call site. Show it once. (A "once" filter is not enough:
# pandas, matplotlib and Lightning change the warning filters as they run, and each change makes Python
# forget which warnings it has shown.)
AO_DEPRECATION = "torch.ao.quantization is deprecated"
warnings.filterwarnings("default", AO_DEPRECATION)  # shown even where DeprecationWarnings are ignored
_show_warning = warnings.showwarning
_ao_deprecation_shown = []


def show_warning(message, category, *args, **kwargs):
    """warnings.showwarning, except that torch's deprecation of eager quantization shows only once."""
    if str(message).startswith(AO_DEPRECATION):
        if _ao_deprecation_shown:
            return
        _ao_deprecation_shown.append(message)
    _show_warning(message, category, *args, **kwargs)


warnings.showwarning = show_warning

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
RESULTS_FILE = "quant_results.csv"
RESULT_COLUMNS = ["method", "backend", "threads", "fp32_acc", "int8_acc", "fp32_kb", "int8_kb", "size_ratio",
                  "fp32_ms_b1", "int8_ms_b1", "speedup_b1", "fp32_ms_b256", "int8_ms_b256", "speedup_b256"]


# %% Model
class QuantizableConvNet(nn.Module):
    """Conv-BN-ReLU blocks and a Linear-ReLU between QuantStub and DeQuantStub: 1x28x28 in, 10 log-probabilities out."""

    # Each group becomes one int8 kernel: BN folds into the conv, ReLU clamps inside it.
    FUSE_GROUPS = [["features.0", "features.1", "features.2"], ["features.4", "features.5", "features.6"],
                   ["classifier.1", "classifier.2"]]

    def __init__(self, hidden_units: int = 256, dropout: float = 0.25):
        super().__init__()
        self.quant = tq.QuantStub()  # an identity while float; after convert, float -> uint8 here
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 32x14x14
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 32x7x7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, hidden_units), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_units, 10),
        )
        self.dequant = tq.DeQuantStub()  # after convert, uint8 -> float here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.dequant(self.classifier(self.features(self.quant(x))))
        # The quantized CPU backend has no log_softmax kernel: it must run after the DeQuantStub, in float.
        return F.log_softmax(logits, dim=1)


# %% LightningModule
class MNISTClassifier(pl.LightningModule):
    """The training recipe around QuantizableConvNet, which prepare_qat() turns into its fake-quant twin."""

    def __init__(self, data_dir: str = "data", batch_size: int = 128, lr: float = 0.01, qat_lr: float = 0.001,
                 freeze_epoch: int = 1, backend: str = "x86", hidden_units: int = 256, dropout: float = 0.25,
                 val_size: int = 5000, num_workers: int = 0, seed: int = 42):
        super().__init__()
        self.save_hyperparameters()  # plain types only: checkpoints load with weights_only=True
        self.model = QuantizableConvNet(hidden_units, dropout)
        self.qat = False
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.valid_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)

    def prepare_qat(self) -> None:
        """From now on fit() trains with int8 rounding simulated in every conv and linear layer."""
        self.model = fake_quant_network(self.model, self.hparams.backend)
        self.qat = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_train_epoch_start(self):
        if self.qat and self.current_epoch >= self.hparams.freeze_epoch:
            # Fix the int8 ranges and let batch norm use its running statistics, as it will once folded
            # into the conv: the remaining epochs fine-tune exactly what convert() will produce.
            self.model.apply(tq.disable_observer)
            self.model.apply(nniqat.freeze_bn_stats)

    def on_validation_start(self):
        # Observers update their ranges in every forward, train or eval; validation must not move them.
        if self.qat:
            self.model.apply(tq.disable_observer)

    def on_validation_end(self):
        if self.qat and self.current_epoch < self.hparams.freeze_epoch:
            self.model.apply(tq.enable_observer)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        log_probs = self(images)
        loss = F.nll_loss(log_probs, labels)  # forward already applied log_softmax
        self.train_acc(log_probs, labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        log_probs = self(images)
        self.log("valid_loss", F.nll_loss(log_probs, labels), prog_bar=True, sync_dist=True)
        self.valid_acc.update(log_probs, labels)

    def on_validation_epoch_end(self):
        self.log("valid_acc", self.valid_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        images, labels = batch
        log_probs = self(images)
        self.log("test_loss", F.nll_loss(log_probs, labels), sync_dist=True)
        self.test_acc.update(log_probs, labels)

    def on_test_epoch_end(self):
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self):
        # QAT fine-tunes a trained model: a tenth of the from-scratch learning rate by default.
        lr = self.hparams.qat_lr if self.qat else self.hparams.lr
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=self.trainer.estimated_stepping_batches)
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
def prepare_mnist(data_dir: str) -> None:
    """Download MNIST into data_dir/MNIST/raw unless it is there; exit with a fix-it line if not."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints every mirror it tries
            MNIST(data_dir, train=True, download=True)
            MNIST(data_dir, train=False, download=True)
    except (RuntimeError, OSError) as error:
        raw = Path(data_dir, "MNIST", "raw")
        reason = " ".join(str(error).split())  # torchvision's message spans lines; the error is one line
        die(f"MNIST is not in {raw} and could not be downloaded ({reason}). Copy the four raw files "
            f"(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            f"t10k-labels-idx1-ubyte) there, or point --data_dir or PATH_DATASETS at a folder "
            f"that holds MNIST/raw.")


def mnist_tensors(data_dir: str, train: bool) -> TensorDataset:
    """The whole split as normalized float tensors, decoded once by torchvision."""
    dataset = MNIST(data_dir, train=train, download=False)
    images = (dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)).unsqueeze(1)
    return TensorDataset(images, dataset.targets)


# %% Quantization
def fake_quant_network(net: QuantizableConvNet, backend: str) -> nn.Module:
    """Fuse for QAT and insert fake-quantization: still float tensors, but rounded like int8."""
    net.train()  # fuse_modules_qat keeps BN as a live part of the fused block (folded only at convert)
    tq.fuse_modules_qat(net, QuantizableConvNet.FUSE_GROUPS, inplace=True)
    net.qconfig = tq.get_default_qat_qconfig(backend)  # moving-average ranges, per-channel weights
    return tq.prepare_qat(net, inplace=True)  # the same parameters, now inside QAT modules


def int8_network(fake_quant_net: nn.Module, backend: str) -> nn.Module:
    """Convert a copy of the QAT network: BN folded, weights and ranges frozen into int8 modules."""
    torch.backends.quantized.engine = backend  # the int8 kernels that run; must match the qconfig
    return tq.convert(copy.deepcopy(fake_quant_net).cpu().eval())


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    out = Path(args.output_dir)
    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, lr=args.lr, qat_lr=args.qat_lr,
                            freeze_epoch=args.freeze_epoch, backend=args.backend, val_size=args.val_size,
                            num_workers=args.num_workers, seed=args.seed)
    if args.load_int8:  # read the model first: a bad file fails before any data is touched
        model.model = load_int8(args.load_int8)
        print(f"reloaded {args.load_int8}")
    prepare_mnist(args.data_dir)
    # int8 kernels here are CPU kernels: every test runs on one CPU device, float and int8 alike.
    tester = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        fast_dev_run=args.fast_dev_run, limit_test_batches=args.limit_test_batches)
    if args.load_int8:
        test_int8(model, tester, args)
        return 0

    histories = []
    if args.ckpt:
        load_weights(model, args.ckpt)
    else:
        _, history = fit(model, args, out, args.epochs, keep_best=True)
        histories.append(history.assign(phase="fp32"))
    float_net = copy.deepcopy(model.model).cpu().eval()

    model.prepare_qat()
    trainer, history = fit(model, args, out, args.qat_epochs, keep_best=False)
    histories.append(history.assign(phase="qat"))
    # deterministic=True switched torch into deterministic mode for the whole process; int8 ops
    # (which resize their quantized outputs) refuse to run in it, so switch it back off.
    torch.use_deterministic_algorithms(False)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # exiting with it open can abort; rank 0 goes on alone
    if not trainer.is_global_zero:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if not args.fast_dev_run:
        history = pd.concat(histories, ignore_index=True).rename_axis("epoch")
        print("\n" + history.to_string(float_format="{:.4f}".format))
        history.to_csv(out / "history.csv")
        plot_history(history, out)

    int8_net = int8_network(model.model, args.backend)
    model.model = float_net
    fp32_acc = tester.test(model, verbose=False)[0]["test_acc"]
    print(f"\nfp32 accuracy: {fp32_acc:.4f}")
    model.model = int8_net
    int8_acc = test_int8(model, tester, args)

    torch.save(float_net.state_dict(), out / "mnist_fp32.pt")
    torch.save({"state_dict": int8_net.state_dict(), "backend": args.backend,
                "hidden_units": model.hparams.hidden_units}, out / "mnist_int8.pt")
    fp32_kb, int8_kb = ((out / name).stat().st_size / 1024 for name in ("mnist_fp32.pt", "mnist_int8.pt"))
    latency = measure_latency(float_net, int8_net, model.test_set.tensors[0], args.threads, args.latency_repeats)
    row = dict(method="QAT eager", backend=args.backend, threads=args.threads, fp32_acc=fp32_acc,
               int8_acc=int8_acc, fp32_kb=fp32_kb, int8_kb=int8_kb, size_ratio=int8_kb / fp32_kb, **latency)
    append_result(row, out / RESULTS_FILE)
    print(f"\nOutputs in {out.resolve()}:")
    for path in sorted(out.glob("*")):
        print(f"  {path.name}{'/' if path.is_dir() else ''}")
    return 0


def fit(model: MNISTClassifier, args, out: Path, epochs: int, keep_best: bool):
    """One training phase; the float phase keeps its best epoch, QAT its last (the frozen one)."""
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best",
                                 monitor="valid_acc", mode="max", enable_version_counter=False)
    csv_logger = CSVLogger(out, name="csv_logs")
    try:
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
            num_nodes=args.num_nodes, precision=args.precision, max_epochs=epochs,
            logger=[csv_logger, TensorBoardLogger(out, name="tb_logs")],
            callbacks=[checkpoint] if keep_best else [], enable_checkpointing=keep_best,
            fast_dev_run=args.fast_dev_run, limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches, deterministic=True)
    except (ValueError, RuntimeError) as error:  # e.g. --accelerator gpu on a machine without one
        die(f"cannot build the Trainer: {error}")
    trainer.fit(model)
    if keep_best and checkpoint.best_model_path:
        load_weights(model, checkpoint.best_model_path)
    history = pd.DataFrame() if args.fast_dev_run else epoch_history(Path(csv_logger.log_dir, "metrics.csv"))
    return trainer, history


def load_int8(path: str) -> nn.Module:
    """Rebuild the int8 architecture the way it was made, then load the saved int8 weights into it."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        die(f"cannot read {path} ({error.__class__.__name__}); pass a mnist_int8.pt written by this script")
    if not isinstance(saved, dict) or "backend" not in saved:
        die(f"{path} is not an int8 model saved by this script (no 'backend' entry)")
    net = fake_quant_network(QuantizableConvNet(saved["hidden_units"]), saved["backend"])
    with torch.no_grad():
        net.eval()(torch.zeros(2, 1, 28, 28))  # observers need one batch before convert; values get replaced
    net = int8_network(net, saved["backend"])
    try:
        net.load_state_dict(saved["state_dict"])  # every int8 weight, scale and zero point
    except (RuntimeError, KeyError) as error:
        die(f"{path} does not hold an int8 QuantizableConvNet ({str(error).strip().splitlines()[0]})")
    return net


def test_int8(model: MNISTClassifier, tester: pl.Trainer, args) -> float:
    """The int8 accuracy twice: a plain PyTorch loop, then Trainer.test on the same batches."""
    model.setup("test")
    loader = model.test_dataloader()
    limit = args.fast_dev_run or args.limit_test_batches  # the batches Trainer.test will see
    count = min(limit, len(loader)) if isinstance(limit, int) else int(len(loader) * limit)
    correct = seen = 0
    with torch.inference_mode():
        for (images, labels), _ in zip(loader, range(count)):
            correct += (model.model(images).argmax(dim=1) == labels).sum().item()
            seen += len(labels)
    print(f"int8 accuracy, plain PyTorch loop: {correct / seen:.4f}")
    accuracy = tester.test(model, verbose=False)[0]["test_acc"]
    print(f"int8 accuracy, Trainer.test:       {accuracy:.4f}")
    print(f"test accuracy: {accuracy:.4f}")
    return accuracy


def measure_latency(float_net, int8_net, images, threads: int, repeats: int) -> dict:
    """Median milliseconds per forward at batch 1 and 256; the two models take turns, so a noisy
    neighbour on the machine slows both alike, and the first (warm-up) calls are not counted."""
    if repeats == 0:
        return {}
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    result = {}
    with torch.inference_mode():
        for batch in (1, 256):
            x = images[:batch]
            times = {"fp32": [], "int8": []}
            for _ in range(3):
                float_net(x), int8_net(x)
            for _ in range(repeats):
                for name, net in (("fp32", float_net), ("int8", int8_net)):
                    start = time.perf_counter()
                    net(x)
                    times[name].append(1000 * (time.perf_counter() - start))
            for name in times:
                result[f"{name}_ms_b{batch}"] = statistics.median(times[name])
            result[f"speedup_b{batch}"] = result[f"fp32_ms_b{batch}"] / result[f"int8_ms_b{batch}"]
    torch.set_num_threads(default_threads)
    return result


def append_result(row: dict, path: Path) -> None:
    table = pd.DataFrame([row], columns=RESULT_COLUMNS)
    print(f"\nresults ({row['threads']} CPU threads; latency = median ms per forward; sizes in KiB):")
    print(table.to_string(index=False, float_format="{:.4g}".format))
    table.to_csv(path, mode="a", header=not path.exists(), index=False)


def load_weights(model: MNISTClassifier, path: str) -> None:
    """Load a Lightning .ckpt (or a .pt state_dict) of the float QuantizableConvNet into model.model."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        die(f"cannot read {path} ({error.__class__.__name__}); pass a Lightning .ckpt written by one of the "
            f"quantization scripts, or mnist_fp32.pt")
    if isinstance(saved, dict) and "state_dict" in saved:  # a Lightning checkpoint
        saved = {k.removeprefix("model."): v for k, v in saved["state_dict"].items() if k.startswith("model.")}
    try:
        model.model.load_state_dict(saved)
    except (RuntimeError, TypeError, AttributeError) as error:
        first_line = str(error).strip().splitlines()[0]
        die(f"{path} does not hold float weights for QuantizableConvNet ({first_line})")


def epoch_history(metrics_csv: Path) -> pd.DataFrame:
    """One row per epoch from CSVLogger's file, where train and valid values sit on separate rows."""
    metrics = pd.read_csv(metrics_csv)
    columns = [c for c in ("train_loss", "valid_loss", "train_acc", "valid_acc") if c in metrics]
    return metrics.groupby("epoch")[columns].last().dropna(how="all")


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
    data.add_argument("--output_dir", "--output-dir", default="outputs/quant_lightning_qat",
                      help="where logs, models and quant_results.csv go")
    data.add_argument("--val_size", "--val-size", type=int, default=5000, help="training images held out for validation")
    data.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader worker processes")

    train = parser.add_argument_group("training")
    train.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    train.add_argument("--epochs", type=int, default=3, metavar="N", help="float epochs before QAT")
    train.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the float phase (one-cycle)")
    train.add_argument("--seed", type=int, default=42, help="seeds weights, split and shuffling")

    quant = parser.add_argument_group("quantization")
    quant.add_argument("--ckpt", metavar="PATH", help="start QAT from this float checkpoint (.ckpt or mnist_fp32.pt) "
                       "instead of training the float model first")
    quant.add_argument("--qat_epochs", "--qat-epochs", type=int, default=2, metavar="N", help="fake-quant epochs")
    quant.add_argument("--qat_lr", "--qat-lr", type=float, default=0.001, help="peak learning rate of the QAT phase")
    quant.add_argument("--freeze_epoch", "--freeze-epoch", type=int, default=1, metavar="N",
                       help="QAT epoch (from 0) from which observers and batch-norm statistics are frozen")
    quant.add_argument("--backend", default="x86", choices=[e for e in torch.backends.quantized.supported_engines
                                                             if e != "none"],
                       help="the quantized engine and its default QAT qconfig")
    quant.add_argument("--load_int8", "--load-int8", metavar="PATH", help="test a saved mnist_int8.pt and exit")
    quant.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for the latency measurement")
    quant.add_argument("--latency_repeats", "--latency-repeats", type=int, default=50, metavar="N",
                       help="timed forwards per model and batch size (median reported); 0 skips timing")

    hardware = parser.add_argument_group("hardware for training (passed to pl.Trainer); tests run on the CPU")
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

    for flag in ("epochs", "qat_epochs", "batch_size", "val_size", "num_nodes", "threads"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0 or args.qat_lr <= 0:
        die(f"--lr and --qat_lr must be positive, got {args.lr} and {args.qat_lr}")
    if args.num_workers < 0 or args.latency_repeats < 0 or args.freeze_epoch < 0:
        die("--num_workers, --latency_repeats and --freeze_epoch cannot be negative")
    for flag in ("ckpt", "load_int8"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            die(f"--{flag} {path}: no such file")
    return args


if __name__ == "__main__":
    sys.exit(main())
