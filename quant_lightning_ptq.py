"""
Title: Post-training int8 quantization of a Lightning model
Description: Train an MNIST CNN with Lightning, calibrate it on a few batches and convert it to int8.

What it teaches
    Post-training static quantization (PTQ) of a model trained by the Lightning Trainer: the network
    carries `QuantStub` / `DeQuantStub` where int8 starts and ends, conv+bn+relu and linear+relu are
    fused into single kernels, observers from the x86 qconfig record activation ranges on
    --calibration_batches training batches, and `convert` swaps in int8 modules. The int8 model then
    runs under a plain PyTorch loop and under `Trainer.test` (same accuracy), is saved as a
    state_dict and reloaded by rebuilding the same int8 architecture, and is timed against the float
    model on the CPU. `--flow pt2e` does the same with the API that replaces eager quantization:
    `torch.export`, torchao's `X86InductorQuantizer`, `prepare_pt2e` / `convert_pt2e` and
    `torch.compile` with freezing.

How to run
    python quant_lightning_ptq.py                               # train 3 epochs, quantize, compare
    python quant_lightning_ptq.py --data_dir ../shared/data     # MNIST already on disk, offline
    python quant_lightning_ptq.py --ckpt outputs/quant_lightning_ptq/checkpoints/best.ckpt  # no training
    python quant_lightning_ptq.py --calibration_batches 8 --backend onednn
    python quant_lightning_ptq.py --flow pt2e --ckpt outputs/quant_lightning_ptq/checkpoints/best.ckpt
    python quant_lightning_ptq.py --load_int8 outputs/quant_lightning_ptq/mnist_int8.pt  # reload, test

What it writes (under --output_dir, default outputs/quant_lightning_ptq)
    csv_logs/, tb_logs/, checkpoints/best.ckpt   when it trains (best valid_acc), as the basic script
    history.csv, loss.png, acc.png               the per-epoch table and its curves, when it trains
    mnist_fp32.pt, mnist_int8.pt                 state_dicts of the float and the int8 network (eager)
    mnist_fp32.pt2, mnist_int8.pt2               torch.export programs (--flow pt2e)
    quant_results.csv                            one row appended per run: accuracy, size, latency
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
# torch.compile's int8 lowering copies a tensor the discouraged way inside torch; not ours to fix.
warnings.filterwarnings("ignore", "To copy construct from a tensor", module="torch._inductor")
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
    """The training recipe around QuantizableConvNet; `self.model` is later swapped for its int8 version."""

    def __init__(self, data_dir: str = "data", batch_size: int = 128, lr: float = 0.01, hidden_units: int = 256,
                 dropout: float = 0.25, val_size: int = 5000, num_workers: int = 0, seed: int = 42):
        super().__init__()
        self.save_hyperparameters()  # plain types only: checkpoints load with weights_only=True
        self.model = QuantizableConvNet(hidden_units, dropout)
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.valid_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

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
def quantize_eager(float_net: QuantizableConvNet, backend: str, calibration) -> nn.Module:
    """Fuse, attach observers, run the calibration images through, convert: a new int8 network."""
    torch.backends.quantized.engine = backend  # the int8 kernels that run; must match the qconfig
    net = copy.deepcopy(float_net).cpu().eval()  # eval: fusing folds the BN statistics into the conv
    tq.fuse_modules(net, QuantizableConvNet.FUSE_GROUPS, inplace=True)
    net.qconfig = tq.get_default_qconfig(backend)  # x86: histogram observer, per-channel int8 weights
    tq.prepare(net, inplace=True)
    with torch.no_grad():
        for images in calibration:
            net(images)
    return tq.convert(net, inplace=True)


def pt2e_api():
    """torchao's PT2E functions, or a one-line fix-it message when torchao is missing."""
    try:
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    except ImportError as error:
        die(f"--flow pt2e needs torchao ({error}): pip install torchao (pinned in requirements-dev.txt)")
    return allow_exported_model_train_eval, prepare_pt2e, convert_pt2e, X86InductorQuantizer, \
        get_default_x86_inductor_quantization_config


def export_program(net: nn.Module) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)  # any batch size; example batch 2 keeps it symbolic
    return torch.export.export(net, (torch.zeros(2, 1, 28, 28),), dynamic_shapes={"x": {0: batch}})


def quantize_pt2e(float_net: QuantizableConvNet, calibration) -> torch.fx.GraphModule:
    """torch.export the float network, annotate it for x86 int8, calibrate, convert (q/dq ops in a graph)."""
    _, prepare_pt2e, convert_pt2e, X86InductorQuantizer, default_config = pt2e_api()
    graph = export_program(copy.deepcopy(float_net).cpu().eval()).module()  # the QuantStubs trace as identities
    quantizer = X86InductorQuantizer().set_global(default_config())
    prepared = prepare_pt2e(graph, quantizer)  # folds BN, inserts observers where the quantizer annotated
    with torch.no_grad():
        for images in calibration:
            prepared(images)
    converted = convert_pt2e(prepared)
    # convert_pt2e adds int8 copies of the weights but keeps the float ones; drop those, unused now.
    used = {node.target for node in converted.graph.nodes if node.op == "get_attr"}
    for name, _ in list(converted.named_parameters()):
        if name not in used:
            owner, _, attribute = name.rpartition(".")
            delattr(converted.get_submodule(owner), attribute)
    return converted


def compile_int8(graph: torch.fx.GraphModule) -> nn.Module:
    """torch.compile with freezing: Inductor turns the q/dq patterns into fused int8 (oneDNN) kernels."""
    allow_exported_model_train_eval = pt2e_api()[0]
    allow_exported_model_train_eval(graph)  # Trainer.test calls .eval(), which exported graphs refuse
    torch._inductor.config.freezing = True  # weights become constants, so they can be prepacked as int8
    # dynamic=False: in torch 2.14 the int8 conv lowering fails on a symbolic batch size (a stride
    # assertion), so each batch size gets its own compiled graph (a few seconds each).
    return torch.compile(graph, dynamic=False)


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    out = Path(args.output_dir)
    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, lr=args.lr,
                            val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
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

    if args.ckpt:
        load_weights(model, args.ckpt)
    elif not train_float_model(model, args, out):
        return 0  # a DDP rank other than 0: rank 0 quantizes and reports
    out.mkdir(parents=True, exist_ok=True)

    float_net = model.model.cpu().eval()
    fp32_acc = tester.test(model, verbose=False)[0]["test_acc"]
    print(f"\nfp32 accuracy: {fp32_acc:.4f}")

    model.setup("fit")  # calibration uses training images, never the test set
    loader = model.train_dataloader()
    batches = iter(loader)
    calibration = [next(batches)[0] for _ in range(min(args.calibration_batches, len(loader)))]
    start = time.perf_counter()
    if args.flow == "eager":
        int8_net = quantize_eager(float_net, args.backend, calibration)
        torch.save(float_net.state_dict(), out / "mnist_fp32.pt")
        torch.save({"state_dict": int8_net.state_dict(), "backend": args.backend,
                    "hidden_units": model.hparams.hidden_units}, out / "mnist_int8.pt")
        files, method, backend = (out / "mnist_fp32.pt", out / "mnist_int8.pt"), "PTQ eager", args.backend
    else:
        graph = quantize_pt2e(float_net, calibration)
        torch.export.save(export_program(float_net), out / "mnist_fp32.pt2")
        torch.export.save(export_program(graph), out / "mnist_int8.pt2")
        int8_net = compile_int8(graph)
        files, method, backend = (out / "mnist_fp32.pt2", out / "mnist_int8.pt2"), "PTQ PT2E", "x86 inductor"
    print(f"quantized ({method}, {len(calibration)} calibration batches) in {time.perf_counter() - start:.1f} s")

    model.model = int8_net
    int8_acc = test_int8(model, tester, args)
    fp32_kb, int8_kb = (path.stat().st_size / 1024 for path in files)
    latency = measure_latency(float_net, int8_net, model.test_set.tensors[0], args.threads, args.latency_repeats)
    row = dict(method=method, backend=backend, threads=args.threads, fp32_acc=fp32_acc, int8_acc=int8_acc,
               fp32_kb=fp32_kb, int8_kb=int8_kb, size_ratio=int8_kb / fp32_kb, **latency)
    append_result(row, out / RESULTS_FILE)
    print(f"\nOutputs in {out.resolve()}:")
    for path in sorted(out.glob("*")):
        print(f"  {path.name}{'/' if path.is_dir() else ''}")
    return 0


def train_float_model(model: MNISTClassifier, args, out: Path) -> bool:
    """Fit the float model, keep its best epoch; True on the process that goes on to quantize."""
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best",
                                 monitor="valid_acc", mode="max", enable_version_counter=False)
    csv_logger = CSVLogger(out, name="csv_logs")
    try:
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
            num_nodes=args.num_nodes, precision=args.precision, max_epochs=args.epochs,
            logger=[csv_logger, TensorBoardLogger(out, name="tb_logs")], callbacks=[checkpoint],
            fast_dev_run=args.fast_dev_run, limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches, deterministic=True)
    except (ValueError, RuntimeError) as error:  # e.g. --accelerator gpu on a machine without one
        die(f"cannot build the Trainer: {error}")
    trainer.fit(model)
    # deterministic=True switched torch into deterministic mode for the whole process; int8 ops
    # (which resize their quantized outputs) refuse to run in it, so switch it back off.
    torch.use_deterministic_algorithms(False)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Close the process group ourselves (a DDP process that exits with it open can abort);
        # quantization and the CPU tests that follow run in rank 0 alone.
        torch.distributed.destroy_process_group()
    if not trainer.is_global_zero:
        return False
    if checkpoint.best_model_path:
        load_weights(model, checkpoint.best_model_path)
    if not args.fast_dev_run:
        history = epoch_history(Path(csv_logger.log_dir, "metrics.csv"))
        print("\n" + history.to_string(float_format="{:.4f}".format))
        history.to_csv(out / "history.csv")
        plot_history(history, out)
    return True


def load_int8(path: str) -> nn.Module:
    """An int8 model saved by this script: mnist_int8.pt (eager) or mnist_int8.pt2 (--flow pt2e)."""
    if path.endswith(".pt2"):
        pt2e_api()  # importing torchao registers the quantize/dequantize ops the program calls
        try:
            program = torch.export.load(path)
        except Exception as error:
            die(f"cannot read {path} as a torch.export program ({error.__class__.__name__}); pass a "
                f"mnist_int8.pt2 written by --flow pt2e")
        return compile_int8(program.module())
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        die(f"cannot read {path} ({error.__class__.__name__}); pass a mnist_int8.pt or mnist_int8.pt2 "
            f"written by this script")
    if not isinstance(saved, dict) or "backend" not in saved:
        die(f"{path} is not an int8 model saved by this script (no 'backend' entry)")
    # Rebuild the int8 architecture the way it was made, then load the int8 weights into it. One dummy
    # batch gives the observers a range so that convert runs; load_state_dict replaces every weight,
    # scale and zero point. (torch.save of the whole module would pickle code, not just tensors.)
    net = quantize_eager(QuantizableConvNet(saved["hidden_units"]), saved["backend"], [torch.zeros(2, 1, 28, 28)])
    try:
        net.load_state_dict(saved["state_dict"])
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
    data.add_argument("--output_dir", "--output-dir", default="outputs/quant_lightning_ptq",
                      help="where logs, models and quant_results.csv go")
    data.add_argument("--val_size", "--val-size", type=int, default=5000, help="training images held out for validation")
    data.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader worker processes")

    train = parser.add_argument_group("training the float model")
    train.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    train.add_argument("--epochs", type=int, default=3, metavar="N")
    train.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the one-cycle schedule")
    train.add_argument("--seed", type=int, default=42, help="seeds weights, split, shuffling and calibration batches")

    quant = parser.add_argument_group("quantization")
    quant.add_argument("--ckpt", metavar="PATH", help="quantize this float checkpoint (.ckpt or mnist_fp32.pt) "
                       "instead of training")
    quant.add_argument("--flow", choices=["eager", "pt2e"], default="eager",
                       help="eager: torch.ao.quantization (deprecated); pt2e: torch.export + torchao + torch.compile")
    quant.add_argument("--backend", default="x86", choices=[e for e in torch.backends.quantized.supported_engines
                                                             if e != "none"],
                       help="eager flow: the quantized engine and its default qconfig")
    quant.add_argument("--calibration_batches", "--calibration-batches", type=int, default=32, metavar="N",
                       help="training batches the observers see before convert")
    quant.add_argument("--load_int8", "--load-int8", metavar="PATH",
                       help="test a saved int8 model (mnist_int8.pt, or mnist_int8.pt2 from --flow pt2e) and exit")
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

    for flag in ("epochs", "batch_size", "val_size", "num_nodes", "calibration_batches", "threads"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        die(f"--lr must be positive, got {args.lr}")
    if args.num_workers < 0 or args.latency_repeats < 0:
        die("--num_workers and --latency_repeats cannot be negative")
    for flag in ("ckpt", "load_int8"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            die(f"--{flag} {path}: no such file")
    return args


if __name__ == "__main__":
    sys.exit(main())
