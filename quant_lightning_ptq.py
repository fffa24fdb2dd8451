# %% [markdown]
# # Post-training int8 quantization of a Lightning model
# Train an MNIST CNN with Lightning, calibrate it on a few batches and convert it to int8.
#
# ## What it teaches
# Post-training static quantization (PTQ) of a plain float network the Trainer trained, two ways:
# - `--flow eager`: torch.ao.quantization (deprecated): QuantStub / DeQuantStub around the network,
#   conv+bn+relu and linear+relu fused, observers calibrated on training batches, `convert`.
# - `--flow pt2e`: its successor: `torch.export`, torchao's `X86InductorQuantizer`, `prepare_pt2e`,
#   calibrate, `convert_pt2e`, `torch.compile` into int8 kernels; no torch.ao.quantization at all.
#
# The int8 model is tested by a plain loop and by `Trainer.test`, saved, and timed against the float
# model on the CPU; `--load_int8` rebuilds it from the file.
# ## How to run
# ```bash
# python quant_lightning_ptq.py --data_dir /path/to/datasets      # train 3 epochs, quantize (eager), compare
# python quant_lightning_ptq.py --flow pt2e --ckpt outputs/quant_lightning_ptq/checkpoints/best.ckpt  # no training
# python quant_lightning_ptq.py --load_int8 outputs/quant_lightning_ptq/mnist_int8.pt   # reload and test (or .pt2)
# ```
# ## What it writes (under --output_dir, default outputs/quant_lightning_ptq)
# ```text
# csv_logs/, tb_logs/, checkpoints/best.ckpt, history.csv, loss.png, acc.png   when it trains
# mnist_fp32.pt, mnist_int8.pt      state_dicts of the float and the int8 network (eager)
# mnist_fp32.pt2, mnist_int8.pt2    torch.export programs (pt2e); the int8 one holds mnist_int8/state.pt
# quant_results.csv                 one row added per run: accuracy, size, latency
# ```
# `--load_int8` reads only tensors (`weights_only=True`), never a `.pt2`'s program, and writes nothing.

# %% Parameters tags=["parameters"]
ARGS = []  # a notebook run's flags, as on the command line (e.g. ["--epochs", "1"]); a shell run reads its own

# %% Imports
import argparse
import contextlib
import copy
import errno
import io
import logging
import math
import os
import pickle
import statistics
import struct
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import matplotlib

# Copied from Basic_usage_of_lightning.py
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

# Eager quantization (deprecated; only --flow eager uses it) may be gone from a future torch.
try:
    import torch.ao.quantization as tq
except ImportError:
    tq = None

# Notes that a reader cannot act on. Loader workers: the data are tensors in memory. A Lightning 2.6 pytree
# check deprecated by torch 2.14. Lightning's notes on limits left at 1.0 and its cloud logger tip.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: not any(note in record.getMessage() for note in ("=1.0)` was configured", "Tip: For seamless")))
warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")  # reruns replace best.ckpt
# torch's own internals: inductor's int8 lowering, a CUDA_HOME probe, torchao registering an Enum.
warnings.filterwarnings("ignore", "To copy construct from a tensor", module="torch._inductor")
logging.getLogger("torch.utils.cpp_extension").addFilter(lambda record: "No CUDA runtime" not in record.getMessage())
logging.getLogger("torch.utils._pytree").addFilter(lambda record: "is an Enum subclass" not in record.getMessage())
# torch repeats a six-line eager deprecation at every call, and warns about its retired parts; said once by
# quantize_eager instead (EAGER_DEPRECATION).
for retired in ("torch.ao.quantization is deprecated", "torch.quantize_per_tensor, torch.quantize_per_channel",
                "Please use quant_min and quant_max", "TypedStorage is deprecated"):
    warnings.filterwarnings("ignore", retired)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# %% [markdown]
# ## Model
# A plain `nn.Module`, no Lightning in it: two Conv-BN-ReLU blocks and a Linear-ReLU, 1x28x28 image in, 10 logits out.

# %% Model
class MNISTConvBNNet(nn.Module):
    """A plain float network, nothing about quantization in it: each flow adds what it needs."""

    def __init__(self, hidden_units: int = 256, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(  # no conv bias: BN's shift replaces it (and folds into the int8 bias)
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 32x14x14
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 32x7x7
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, hidden_units), nn.ReLU(),
                                        nn.Dropout(dropout), nn.Linear(hidden_units, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Logits: cross_entropy applies log_softmax itself, in float, after int8 has ended.
        return self.classifier(self.features(x))


# %% [markdown]
# ## LightningModule
# The training recipe around `MNISTConvBNNet`; to test the int8 model, `self.model` is swapped for it.

# %% LightningModule
class MNISTClassifier(pl.LightningModule):
    def __init__(self, data_dir: str = "data", batch_size: int = 128, eval_batch_size: int = 128, lr: float = 0.01,
                 hidden_units: int = 256, dropout: float = 0.25, val_size: int = 5000, num_workers: int = 0, seed: int = 42):
        super().__init__()
        self.save_hyperparameters()  # plain types only: checkpoints load with weights_only=True
        self.model = MNISTConvBNNet(hidden_units, dropout)
        self.train_loss = MeanMetric()
        self.train_acc, self.valid_acc, self.test_acc = (Accuracy(task="multiclass", num_classes=10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_loss.update(loss.detach(), weight=len(labels))
        self.train_acc.update(logits, labels)
        return loss

    def on_train_epoch_end(self):
        self.log("train_loss", self.train_loss, prog_bar=True)
        self.log("train_acc", self.train_acc)

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
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str):
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

    def _loader(self, dataset, batch_size, shuffle=False):
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size, shuffle=shuffle, num_workers=workers, persistent_workers=workers > 0)


# %% [markdown]
# ## Data
# MNIST as normalized float tensors, decoded once, and a train/validation split fixed by the seed.

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
# ## Training the float model
# Fit the float model with the Trainer and load its best epoch: the model to quantize.

# %% Training the float model
def train_float_model(model: MNISTClassifier, args, out: Path) -> bool:
    """Fit the float model and load its best epoch; True on the process that goes on to quantize."""
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="valid_acc", mode="max",
                                 enable_version_counter=False)
    csv_logger = CSVLogger(out, name="csv_logs")
    with exit_on_error("cannot build the Trainer from these flags"):
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes,
            precision=args.precision, max_epochs=args.epochs, callbacks=[checkpoint], plugins=[AtomicCheckpointIO()],
            logger=[csv_logger, TensorBoardLogger(out, name="tb_logs")], fast_dev_run=args.fast_dev_run,
            limit_train_batches=args.limit_train_batches, limit_val_batches=args.limit_val_batches, deterministic=True)
    with exit_if_interrupted(trainer), exit_if_write_fails(out):  # logs: one line on a full disk
        trainer.fit(model)
    torch.use_deterministic_algorithms(False)  # deterministic=True's process-wide mode: int8 ops refuse to run in it
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # rank 0 alone goes on; an open group can abort the exit
    if not trainer.is_global_zero:
        return False
    if checkpoint.best_model_path:
        load_weights(model, checkpoint.best_model_path)
    if not args.fast_dev_run:
        report_float_training(Path(csv_logger.log_dir, "metrics.csv"), out)
    return True


def calibration_batches(model: MNISTClassifier, count: int) -> list:
    """The first `count` training batches: calibration sees training images, never the test set."""
    model.setup("fit")
    return [images for _, (images, _) in zip(range(count), model.train_dataloader())]


# %% [markdown]
# ## Eager quantization (torch.ao.quantization, deprecated)
# `--flow eager`: stubs around the network, fused layers, observers run on a few training batches, then `convert`.

# %% Eager quantization (torch.ao.quantization, deprecated)
EAGER_DEPRECATION = ("note: torch.ao.quantization is deprecated and will be removed from torch: --flow eager "
                     "stops working then; --flow pt2e does the same with torchao")
# Each group becomes one int8 kernel (BN folded into the conv, ReLU inside it); names inside QuantStubWrapper.
FUSE_GROUPS = [["net.features.0", "net.features.1", "net.features.2"], ["net.features.4", "net.features.5", "net.features.6"],
               ["net.classifier.1", "net.classifier.2"]]


class QuantStubWrapper(nn.Module):
    """The float network between a QuantStub and a DeQuantStub: where eager int8 starts and ends."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.quant, self.net, self.dequant = tq.QuantStub(), net, tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.net(self.quant(x)))  # after it (the loss's log_softmax): float


def quantize_eager(float_net: MNISTConvBNNet, backend: str, calibration: list) -> nn.Module:
    """Wrap in stubs, fuse, attach observers, run the calibration images through, convert: a new int8 network."""
    if tq is None:
        die("--flow eager needs torch.ao.quantization, which this torch no longer has; use --flow pt2e")
    print(EAGER_DEPRECATION)
    torch.backends.quantized.engine = backend  # the int8 kernels that run; must match the qconfig
    net = QuantStubWrapper(copy.deepcopy(float_net)).cpu().eval()  # eval: fusing folds BN into the conv
    tq.fuse_modules(net, FUSE_GROUPS, inplace=True)
    net.qconfig = tq.get_default_qconfig(backend)  # x86: histogram observer, per-channel int8 weights
    tq.prepare(net, inplace=True)
    with torch.no_grad():
        for images in calibration:
            net(images)
    return tq.convert(net, inplace=True)


# %% [markdown]
# ## PT2E quantization (torch.export + torchao)
# `--flow pt2e`, its successor: `torch.export`, torchao's `X86InductorQuantizer`, calibrate, `convert_pt2e`, compile.

# %% PT2E quantization (torch.export + torchao)
def pt2e_api() -> tuple:
    """torchao's PT2E functions (importing torchao registers the quantized ops that a .pt2 program calls)."""
    try:
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    except ImportError as error:
        die(f"--flow pt2e needs torchao ({error}): pip install torchao (pinned in requirements-dev.txt)")
    return (allow_exported_model_train_eval, prepare_pt2e, convert_pt2e, X86InductorQuantizer,
            get_default_x86_inductor_quantization_config)


def export_program(net: nn.Module) -> torch.export.ExportedProgram:
    """torch.export for any batch size (an example batch of 2 keeps that dimension symbolic)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(net, (torch.zeros(2, 1, 28, 28),), dynamic_shapes={"x": {0: batch}})


def quantize_pt2e(float_net: MNISTConvBNNet, calibration: list, calibrated_state=None) -> tuple:
    """Export, annotate for x86 int8, calibrate, convert; also the calibrated tensors, from which (as calibrated_state,
    in place of calibration) convert rebuilds the same int8 graph bit for bit: what --load_int8 reads."""
    allow_train_eval, prepare_pt2e, convert_pt2e, X86InductorQuantizer, default_config = pt2e_api()
    graph = export_program(copy.deepcopy(float_net).cpu().eval()).module()
    quantizer = X86InductorQuantizer().set_global(default_config())
    prepared = prepare_pt2e(graph, quantizer)  # folds BN, inserts observers where the quantizer annotated
    if calibrated_state is not None:
        prepared.load_state_dict(calibrated_state)
    with torch.no_grad():
        for images in calibration:
            prepared(images)
    calibrated_state = copy.deepcopy(prepared.state_dict())  # deepcopy: keeps the observers' versions
    converted = convert_pt2e(prepared)
    # convert_pt2e adds int8 copies of the weights but keeps the float ones; drop those, unused now.
    used = {node.target for node in converted.graph.nodes if node.op == "get_attr"}
    for name, _ in list(converted.named_parameters()):
        if name not in used:
            owner, _, attribute = name.rpartition(".")
            delattr(converted.get_submodule(owner), attribute)
    allow_train_eval(converted)  # Trainer.test calls .eval(), which an exported graph otherwise refuses
    return converted, calibrated_state


def compile_for_inference(net: nn.Module) -> nn.Module:
    """torch.compile with frozen weights, so Inductor fuses an int8 graph's q/dq patterns into int8 kernels."""
    torch._inductor.config.freezing = True
    return torch.compile(net, dynamic=False)  # torch 2.14's int8 conv lowering fails on a symbolic batch size


# %% [markdown]
# ## Saving and loading the int8 model
# Eager: state_dicts; PT2E: the exported programs. Both hold the tensors that `--load_int8` rebuilds the model from.

# %% Saving and loading the int8 model
def save_int8(int8_net: nn.Module, float_net: nn.Module, flow: str, backend: str, out: Path, calibrated_state=None) -> tuple:
    """mnist_fp32 and mnist_int8, .pt (eager) or .pt2 (PT2E); their sizes in KiB (of a .pt2, its program)."""
    rebuild = {"backend": backend, "hidden_units": float_net.classifier[1].out_features}
    if flow == "eager":
        save_atomically(float_net.state_dict(), out / "mnist_fp32.pt")
        save_atomically({"state_dict": int8_net.state_dict(), **rebuild}, out / "mnist_int8.pt")
        return (out / "mnist_fp32.pt").stat().st_size / 1024, (out / "mnist_int8.pt").stat().st_size / 1024
    return (save_program(export_program(float_net), out / "mnist_fp32.pt2") / 1024,
            save_program(export_program(int8_net), out / "mnist_int8.pt2", {"state_dict": calibrated_state, **rebuild}) / 1024)


def load_int8(path: str, flow: str) -> nn.Module:
    """The int8 model of a mnist_int8.pt or .pt2, rebuilt by this script from the file's tensors: nothing in it runs."""
    saved = read_int8_file(path, flow)
    try:
        if flow == "pt2e":
            graph, _ = quantize_pt2e(MNISTConvBNNet(saved["hidden_units"]), [], saved["state_dict"])
            return compile_for_inference(graph)
        # Eager: a dummy batch gives the observers a range for convert; load_state_dict replaces all the values.
        net = quantize_eager(MNISTConvBNNet(saved["hidden_units"]), saved["backend"], [torch.zeros(2, 1, 28, 28)])
        net.load_state_dict(saved["state_dict"])
        return net
    except Exception as error:
        die(f"{path} does not hold an int8 MNISTConvBNNet written by this script ({first_line(error)})")


# %% [markdown]
# ## Testing and timing the int8 model
# Test accuracy by a plain PyTorch loop and by `Trainer.test` on the same batches; latency against the float model.

# %% Testing and timing the int8 model
def test_int8(model: MNISTClassifier, tester: pl.Trainer, args) -> float:
    """The int8 model's test accuracy by a plain PyTorch loop and by Trainer.test, on the same batches."""
    model.setup("test")
    loader = model.test_dataloader()
    limit = args.fast_dev_run or args.limit_test_batches  # the batches Trainer.test will see
    count = min(limit, len(loader)) if isinstance(limit, int) else int(len(loader) * limit)
    with torch.inference_mode():
        hits = torch.cat([model.model(images).argmax(dim=1) == labels for _, (images, labels) in zip(range(count), loader)])
    print(f"int8 accuracy, plain PyTorch loop: {hits.sum().item() / len(hits):.4f}")
    accuracy = tester.test(model, verbose=False)[0]["test_acc"]
    print(f"int8 accuracy, Trainer.test:       {accuracy:.4f}")
    return accuracy


def measure_latency(float_net: nn.Module, int8_net: nn.Module, images: torch.Tensor, threads: int, repeats: int) -> dict:
    """Median ms per forward at batch 1 and 256, and its spread, of the float network (eager and compiled) and the
    int8 model. They take turns (a noisy neighbour slows all alike); LATENCY_WARMUP rounds are not counted."""
    if repeats == 0:
        return {}
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    nets = {"fp32": float_net, "fp32_compiled": compile_for_inference(float_net), "int8": int8_net}
    times = {}
    with torch.inference_mode():
        for batch in (1, 256):
            x = images[:batch]
            for round_ in range(LATENCY_WARMUP + repeats):
                for name, net in nets.items():
                    start = time.perf_counter()
                    net(x)
                    if round_ >= LATENCY_WARMUP:
                        times.setdefault((name, batch), []).append(1000 * (time.perf_counter() - start))
    torch.set_num_threads(default_threads)
    return latency_summary(times, threads)


LATENCY_WARMUP = 10  # rounds of every model before timing starts: compiling, caches, CPU clock ramping up
LATENCY_BUSY = 0.25  # an interquartile range above this fraction of the median: the machine was busy


def latency_summary(times: dict, threads: int) -> dict:
    """Medians, speed-ups and spreads from {(model, batch): [ms, ...]}, printed; a warning if the machine was busy."""
    result = {}
    for batch in sorted({batch for _, batch in times}):
        quartiles = {name: statistics.quantiles(ms, n=4) if len(ms) > 1 else ms * 3
                     for (name, b), ms in times.items() if b == batch}
        result.update({f"{name}_ms_b{batch}": median for name, (_, median, _) in quartiles.items()})
        result[f"speedup_b{batch}"] = result[f"fp32_ms_b{batch}"] / result[f"int8_ms_b{batch}"]
        result[f"speedup_compiled_b{batch}"] = result[f"fp32_compiled_ms_b{batch}"] / result[f"int8_ms_b{batch}"]
        result[f"spread_b{batch}"] = max((q3 - q1) / median for q1, median, q3 in quartiles.values())
        print(f"latency at batch {batch}, ms per forward, median (interquartile range) of {len(times['int8', batch])} "
              f"after {LATENCY_WARMUP} warm-up rounds, {threads} CPU thread{'s' if threads > 1 else ''}: "
              + ", ".join(f"{name} {m:.3g} ({q1:.3g}-{q3:.3g})" for name, (q1, m, q3) in quartiles.items()))
    spread = max((value for key, value in result.items() if key.startswith("spread_")), default=0)
    if spread > LATENCY_BUSY:
        print(f"warning: the timings spread over {spread:.0%} of their median: the machine was busy, so these "
              f"latencies and speed-ups will not hold; time again on an idle machine", file=sys.stderr)
    return result


# %% [markdown]
# ## Main
# What the command line runs, and the last cell with the parameters cell's `ARGS`; below it, flags, checks, helpers.

# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    out = Path(args.output_dir)
    before = file_times(out)  # to tell this run's outputs from an earlier run's
    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                            lr=args.lr, val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
    if args.named_modules or args.named_parameters:
        print_structure(model, args.named_modules, args.named_parameters)
        return 0
    if args.load_int8:  # read the model first: a bad file fails before any data is touched
        model.model = load_int8(args.load_int8, args.flow)
        print(f"reloaded {args.load_int8}")
    elif args.ckpt:
        load_weights(model, args.ckpt)
    check_flags_fit_the_data(args, prepare_mnist(args.data_dir), training=not args.load_int8)
    # int8 kernels here are CPU kernels: every test runs on one CPU device, float and int8 alike.
    with exit_on_error("cannot build the test Trainer from these flags"):
        tester = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, fast_dev_run=args.fast_dev_run,
                            limit_test_batches=args.limit_test_batches)
    if args.load_int8:
        test_int8(model, tester, args)
        return 0
    if not args.ckpt and not train_float_model(model, args, out):
        return 0  # a DDP rank other than 0: rank 0 quantizes and reports

    float_net = model.model.cpu().float().eval()  # int8 is made from float32, whatever --precision trained
    fp32_acc = tester.test(model, verbose=False)[0]["test_acc"]
    print(f"\nfp32 accuracy: {fp32_acc:.4f}")
    calibration = calibration_batches(model, args.calibration_batches)
    start = time.perf_counter()
    int8_net, calibrated_state = (quantize_pt2e(float_net, calibration) if args.flow == "pt2e"
                                  else (quantize_eager(float_net, args.backend, calibration), None))
    method, backend = ("PTQ eager", args.backend) if args.flow == "eager" else ("PTQ PT2E", "x86 inductor")
    print(f"quantized ({method}, {len(calibration)} calibration batches) in {time.perf_counter() - start:.1f} s")
    fp32_kb, int8_kb = save_int8(int8_net, float_net, args.flow, args.backend, out, calibrated_state)
    model.model = int8_net = compile_for_inference(int8_net) if args.flow == "pt2e" else int8_net
    int8_acc = test_int8(model, tester, args)
    latency = measure_latency(float_net, int8_net, model.test_set.tensors[0], args.threads, args.latency_repeats)
    append_result(dict(method=method, backend=backend, threads=args.threads, fp32_acc=fp32_acc, int8_acc=int8_acc,
                       fp32_kb=fp32_kb, int8_kb=int8_kb, size_ratio=int8_kb / fp32_kb, **latency), out / RESULTS_FILE)
    print_outputs(out, before)
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train an MNIST CNN with Lightning, calibrate it on a few batches and convert it to int8.",
                                     formatter_class=DefaultsHelpFormatter)
    parser.error = die  # every bad flag value: one line, exit 2
    data = parser.add_argument_group("data and outputs")
    data.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                      help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    data.add_argument("--output_dir", "--output-dir", type=output_folder, default="outputs/quant_lightning_ptq",
                      help="where logs, models and quant_results.csv go")
    data.add_argument("--val_size", "--val-size", type=number(int, min=1), default=5000, help="training images held out for validation")
    data.add_argument("--num_workers", "--num-workers", type=number(int, min=0), default=0, help="DataLoader worker processes")
    train = parser.add_argument_group("training the float model")
    train.add_argument("--batch_size", "--batch-size", type=number(int, min=1), default=128, metavar="N", help="training batch size")
    train.add_argument("--eval_batch_size", "--eval-batch-size", "--test_batch_size", "--test-batch-size",
                       type=number(int, min=1), metavar="N", help="validation and test batch size (default: --batch_size)")
    train.add_argument("--epochs", type=number(int, min=1), default=3, metavar="N", help="training epochs")
    train.add_argument("--lr", type=number(float, above=0), default=0.01, help="peak learning rate of the one-cycle schedule")
    train.add_argument("--seed", type=number(int, min=0, max=2**32 - 1), default=42, help="seeds weights, split, shuffling and calibration batches")
    quant = parser.add_argument_group("quantization")
    quant.add_argument("--flow", choices=["eager", "pt2e"], help="eager: torch.ao.quantization (deprecated); pt2e: "
                       "torch.export + torchao + torch.compile (default: eager, or with --load_int8 the kind of file given)")
    quant.add_argument("--ckpt", metavar="PATH", type=existing_file,
                       help="quantize this float checkpoint (.ckpt or mnist_fp32.pt) instead of training")
    quant.add_argument("--backend", default="x86", choices=[e for e in torch.backends.quantized.supported_engines if e != "none"],
                       help="eager flow: the quantized engine and its default qconfig")
    quant.add_argument("--calibration_batches", "--calibration-batches", type=number(int, min=1), default=32, metavar="N",
                       help="training batches the observers see before convert")
    quant.add_argument("--load_int8", "--load-int8", metavar="PATH", type=existing_file,
                       help="test a saved int8 model (mnist_int8.pt, or mnist_int8.pt2 from --flow pt2e) and exit")
    quant.add_argument("--threads", type=number(int, min=1), default=2, help="torch.set_num_threads for the latency measurement")
    quant.add_argument("--latency_repeats", "--latency-repeats", type=number(int, min=0), default=50, metavar="N",
                       help="timed forwards per model and batch size (median reported); 0 skips timing")
    hardware = parser.add_argument_group("hardware for training (passed to pl.Trainer); tests run on the CPU")
    hardware.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    hardware.add_argument("--devices", default="auto", help="how many devices, or which: 2, 0,1, auto")
    hardware.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ...")
    hardware.add_argument("--num_nodes", "--num-nodes", type=number(int, min=1), default=1, help="machines for multi-node DDP")
    hardware.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, 64-true")
    debug = parser.add_argument_group("debugging (passed to pl.Trainer)")
    debug.add_argument("--fast_dev_run", "--fast-dev-run", nargs="?", type=number(int, min=0), const=1, default=0, metavar="N",
                       help="run N batches of each stage (1 when given alone), write no logs")
    for stage in ("train", "val", "test"):
        debug.add_argument(f"--limit_{stage}_batches", f"--limit-{stage}-batches", type=batch_count, default=1.0,
                           metavar="N|F", help=f"{stage} batches per epoch: a count, or a fraction")
    model = parser.add_argument_group("model inspection")
    model.add_argument("--named_modules", "--named-modules", action="store_true", help="print the modules and exit")
    model.add_argument("--named_parameters", "--named-parameters", action="store_true",
                       help="print every parameter's name and shape and exit")
    original = parser.add_argument_group("flags of the original Lightning 1.x tutorial, still accepted")
    original.add_argument("--no-cuda", "--no_cuda", action=OriginalTutorialFlag, nargs=0, dest="accelerator",
                          const="cpu", note="it is --accelerator cpu now")
    original.add_argument("--test", action=OriginalTutorialFlag, nargs=0, note=(
        "no effect: training always ends with a test now; to test a saved int8 model use --load_int8"))
    original.add_argument("--gamma", action=OriginalTutorialFlag, type=float, note=(
        "no effect: the learning rate follows a one-cycle schedule, not StepLR's decay by gamma"))
    original.add_argument("--log-interval", "--log_interval", action=OriginalTutorialFlag, type=number(int, min=1), note=(
        "no effect: metrics are logged once per epoch; the progress bar shows the running loss"))
    original.add_argument("--save_model", "--save-model", action="store_true",
                          help="no effect here: the float and the int8 model are always saved")
    original.add_argument("--load_model", "--load-model", metavar="PATH", type=existing_file,
                          help="the float weights to quantize instead of training: the same as --ckpt")
    args = parser.parse_args(argv)
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    if args.save_model:
        print("note: --save_model (from the original tutorial): no effect, this script always saves "
              "mnist_fp32 and mnist_int8", file=sys.stderr)
    if args.load_model and args.ckpt and args.ckpt != args.load_model:
        die("--load_model and --ckpt both name the float weights to quantize; pass one of them")
    args.ckpt = args.ckpt or args.load_model
    saved = args.load_int8 and saved_flow(args.load_int8)
    if saved and args.flow not in (None, saved):
        die(f"--flow {args.flow}, but {args.load_int8} was saved by --flow {saved}; pass --flow {saved}, or leave --flow out")
    args.flow = saved or args.flow or "eager"
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


RESULTS_FILE = "quant_results.csv"
RESULT_COLUMNS = ["method", "backend", "threads", "fp32_acc", "int8_acc", "fp32_kb", "int8_kb", "size_ratio",
                  *(f"{name}_b{batch}" for batch in (1, 256) for name in
                    ("fp32_ms", "fp32_compiled_ms", "int8_ms", "speedup", "speedup_compiled")), "spread_b1", "spread_b256"]


def append_result(row: dict, path: Path) -> None:
    """Print the run's row and add it to the results CSV; earlier rows stay, whatever columns they have."""
    table = pd.DataFrame([row], columns=RESULT_COLUMNS)
    print(f"\nresults ({row['threads']} CPU threads; latency = median ms per forward, spread = the widest "
          f"interquartile range / median; sizes in KiB):")
    print(table.to_string(index=False, float_format="{:.4g}".format))
    if path.exists():
        try:
            table = pd.concat([pd.read_csv(path), table], ignore_index=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            die(f"cannot add this run to {path}: it is not a results table ({first_line(error)}); move it away and run again")
    write_atomically(path, lambda file: table.to_csv(file, index=False))


def report_float_training(metrics_csv: Path, out: Path) -> None:
    """The float phase's per-epoch table: printed, saved as history.csv, drawn as loss.png and acc.png."""
    history = epoch_history(metrics_csv)
    print("\n" + history.to_string(float_format="{:.4f}".format))
    write_atomically(out / "history.csv", history.to_csv)
    plot_history(history, out, title="MNIST, float model")


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load_weights(model: MNISTClassifier, path: str) -> None:
    """Load a Lightning .ckpt (or a .pt state_dict) of the float MNISTConvBNNet into model.model."""
    fix = "pass a Lightning .ckpt written by one of the quantization scripts, or mnist_fp32.pt"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        die(f"cannot read {path} ({error.__class__.__name__}); {fix}")
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):  # a Lightning checkpoint
        saved = {k.removeprefix("model."): v for k, v in saved["state_dict"].items() if str(k).startswith("model.")}
    if not isinstance(saved, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in saved.items()):
        die(f"{path} holds no weights (a state_dict maps layer names to tensors); {fix}")
    try:
        model.model.load_state_dict(saved)
    except Exception as error:  # names or shapes of another network; a meta tensor
        die(f"{path} does not hold float weights for MNISTConvBNNet ({first_line(error)})")


INT8_STATE = "mnist_int8/state.pt"  # in a .pt2 this script wrote: what --load_int8 reads, a torch.save dict
MAX_INT8_BYTES = 2**30  # far above what this script writes


def save_program(program: torch.export.ExportedProgram, path: Path, int8_state=None) -> int:
    """torch.export.save, plus int8_state as member INT8_STATE (which torch.export.load skips); the program's bytes."""
    archive = io.BytesIO()
    torch.export.save(program, archive)
    program_bytes = archive.getbuffer().nbytes
    if int8_state is not None:
        state = io.BytesIO()
        torch.save(int8_state, state)
        with zipfile.ZipFile(archive, "a") as members:
            members.writestr(f"{members.namelist()[0].split('/')[0]}/{INT8_STATE}", state.getvalue())
    write_atomically(path, lambda file: file.write(archive.getbuffer()))
    return program_bytes


def saved_flow(path: str) -> str:
    """pt2e for a torch.export archive (or a file named .pt2), eager for anything else (torch.save)."""
    with contextlib.suppress(OSError, zipfile.BadZipFile):
        with zipfile.ZipFile(path) as archive:
            return "pt2e" if any(name.endswith("/archive_format") for name in archive.namelist()) else "eager"
    return "pt2e" if path.endswith(".pt2") else "eager"


def read_int8_file(path: str, flow: str) -> dict:
    """The dict save_int8 wrote, checked, read by zipfile and torch.load(weights_only=True) alone: nothing runs."""
    fix = ("pass a mnist_int8.pt or mnist_int8.pt2 written by this script (a .pt2 from elsewhere is a "
           "program: load only programs you trust, with torch.export.load)")
    try:
        with zipfile.ZipFile(path) as archive:  # a torch.save file is a zip archive too
            if flow == "pt2e":  # only member INT8_STATE, never the program
                members = [m for m in archive.infolist() if m.filename.split("/", 1)[-1] == INT8_STATE
                           and m.filename.split("/")[0].isidentifier()]  # not "", ".", ".."
                if len(members) != 1:
                    die(f"{path} has no single {INT8_STATE} of tensors that this script writes; {fix}")
                if members[0].file_size > MAX_INT8_BYTES:  # checked before unpacking: no zip bomb fills the memory
                    die(f"{path} unpacks to more than {MAX_INT8_BYTES >> 20} MiB; {fix}")
                data = archive.read(members[0])
            else:
                data = Path(path).read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as tensors:  # the sizes torch.load would allocate
            if sum(member.file_size for member in tensors.infolist()) > MAX_INT8_BYTES:
                die(f"{path} unpacks to more than {MAX_INT8_BYTES >> 20} MiB; {fix}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. about the pickle protocol of a foreign file
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # what weights_only refuses: objects whose loading could run code
        die(f"{path} holds more than tensors and plain values, so it is not loaded; {fix}")
    except Exception as error:
        die(f"cannot read {path} ({first_line(error)}); {fix}")
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        die(f"{path} is not an int8 model saved by this script (no 'state_dict' entry); {fix}")
    engines = [engine for engine in torch.backends.quantized.supported_engines if engine != "none"]
    if flow == "eager" and saved.get("backend") not in engines:
        die(f"{path} was made for the quantized engine {saved.get('backend')!r}, which this torch cannot run "
            f"(it has {', '.join(engines)})")
    hidden_units = saved.get("hidden_units")
    if type(hidden_units) is not int or not 1 <= hidden_units <= 65536:  # it sizes a layer built before loading
        die(f"{path} gives hidden_units {hidden_units!r}; a file written by this script has a whole number from 1 to 65536")
    return saved


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
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through save_atomically (a full disk: one line, old file kept)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_atomically(checkpoint, Path(path))


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


# Copied from Basic_usage_of_lightning.py
def epoch_history(metrics_csv: Path) -> pd.DataFrame:
    """One row per epoch from CSVLogger's file, where train and valid values sit on separate rows."""
    metrics = pd.read_csv(metrics_csv)
    columns = [c for c in ("train_loss", "valid_loss", "train_acc", "valid_acc") if c in metrics]
    return metrics.groupby("epoch")[columns].last().dropna(how="all")  # last(): the epoch's final validation


# Copied from Basic_usage_of_lightning.py
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
