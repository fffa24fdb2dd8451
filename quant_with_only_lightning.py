# %% [markdown]
# # Quantization-aware training with only a Lightning callback
# Add a QuantizationAwareTraining callback to the Trainer and get an int8 MNIST CNN after fit.
#
# ## What it teaches
# Lightning 2.0 removed 1.x's `QuantizationAwareTraining` callback. This script writes one (the Callbacks
# section) with the constructor people know, for a LightningModule with no quantization code at all: add
# `callbacks=[qcb]`, and when `fit` returns the module is int8. Two modes, chosen by --flow:
# - `--flow eager`: torch.ao.quantization (deprecated): stubs around the module's forward, fused modules,
#   `prepare_qat` in `setup`, `convert` in `on_fit_end`.
# - `--flow pt2e`: its successor: `setup` swaps the network for the `torch.export` graph from torchao's
#   `prepare_qat_pt2e` (before the optimizer is built); `on_fit_end` runs `convert_pt2e`.
#
# The int8 module is tested by a plain loop and by `Trainer.test`, saved, and timed on the CPU.
# ## How to run
# ```bash
# python quant_with_only_lightning.py --data_dir /path/to/datasets   # 3 float epochs, 2 QAT epochs (eager)
# python quant_with_only_lightning.py --flow pt2e --ckpt outputs/quant_lightning_ptq/checkpoints/best.ckpt
# python quant_with_only_lightning.py --load_int8 outputs/quant_with_only_lightning/mnist_int8.pt  # or .pt2
# ```
# ## What it writes (under --output_dir, default outputs/quant_with_only_lightning)
# ```text
# csv_logs/, tb_logs/             one version per phase: the float run, then the QAT run
# checkpoints/best.ckpt           the float phase's best epoch (the QAT phase keeps its last)
# history.csv, loss.png, acc.png  the per-epoch table of both phases and its curves
# mnist_fp32.pt, mnist_int8.pt    state_dicts of the float network and the int8 LightningModule (eager)
# mnist_fp32.pt2, mnist_int8.pt2  torch.export programs (pt2e); the int8 one holds mnist_int8/state.pt
# quant_results.csv               one row added per run: accuracy, size, latency
# ```
# `--load_int8` reads only tensors (`weights_only=True`), never a `.pt2`'s program, and writes nothing.

# %% Parameters tags=["parameters"]
ARGS = []  # a notebook run's flags, as on the command line (e.g. ["--epochs", "1"]); a shell run reads its own

# %% Imports
import argparse
import contextlib
import copy
import dataclasses
import importlib.util
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

# Eager quantization (deprecated; only the callback's eager mode uses it) may be gone from a future torch.
# torchao, which the PT2E mode uses, is imported where it is used: it takes seconds to import.
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
# torch repeats a six-line eager deprecation at every call, and warns about its retired parts at every int8
# model built or loaded; main says it once instead (EAGER_DEPRECATION).
for retired in ("torch.ao.quantization is deprecated", ".*reduce_range will be deprecated",
                "torch.quantize_per_tensor, torch.quantize_per_channel", "TypedStorage is deprecated"):
    warnings.filterwarnings("ignore", retired)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# %% [markdown]
# ## Model
# A plain `nn.Module`, no Lightning in it: two Conv-BN-ReLU blocks and a Linear-ReLU, 1x28x28 image in, 10 logits out.

# %% Model
# Copied from quant_lightning_ptq.py
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
# A plain training recipe: nothing here knows about quantization.

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
        # The callback quantizes forward, so it stops at the logits: log_softmax has no int8 kernel.
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
        # Called after the callback's setup: self.parameters() are the fake-quant model's.
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
# ## Callbacks
# Quantization-aware training as a callback: after `Trainer(callbacks=[qcb]).fit(model)`, the model is int8.

# %% Callbacks
class QuantizationAwareTraining(pl.Callback):
    """Quantization-aware training as a callback: after `Trainer(callbacks=[qcb]).fit(model)`, model is int8.

    Args:
        qconfig: eager: a quantized engine ("x86", "fbgemm", "onednn", "qnnpack"), for its default QAT qconfig,
            or a `torch.ao.quantization.QConfig`. PT2E: "x86" (torchao's X86InductorQuantizer) or a `Quantizer`.
        observer_type: with a named qconfig, how activation ranges are measured: "average" (moving min/max, the
            QAT default) or "histogram" (HistogramObserver: slower, ignores outliers).
        modules_to_fuse: eager: groups of module names in the LightningModule, e.g. [["model.features.0",
            "model.features.1", "model.features.2"]], each fused into one module, one int8 kernel after convert.
        input_compatible: eager: True keeps float tensors in and out of the int8 module; False: quantized ones.
        quantize_on_fit_end: convert when fit ends; False leaves the fake-quant model, for `qcb.convert(model)`.
        observer_enabled_stages: stages ("train", "validate", "test", "predict") whose observers update ranges.
        flow: "eager" (torch.ao.quantization, deprecated) or "pt2e" (torch.export + torchao).
        network: PT2E: the module's attribute with the float network, replaced by the QAT graph.

    Hooks: `setup("fit")`, before the optimizer is built, makes the module fake-quant (eager: stubs around its
    forward, fused modules, `prepare_qat`; PT2E: export, `prepare_qat_pt2e`); `on_<stage>_start/_end` switch
    observers off outside `observer_enabled_stages` and back (PT2E: and put the graph back in train mode, which
    Lightning's `training` flags cannot); `on_fit_end` converts on the CPU; `state_dict` keeps the settings.
    A checkpoint saved mid-QAT resumes by `trainer.fit(model, ckpt_path=...)` with a float model and this
    callback: setup prepares the same structure first. More in docs/quantization.md.
    """

    STAGES = ("train", "validate", "test", "predict")

    def __init__(self, qconfig="x86", observer_type: str = "average", modules_to_fuse=None, input_compatible: bool = True,
                 quantize_on_fit_end: bool = True, observer_enabled_stages=("train",), flow: str = "eager", network: str = "model"):
        if flow == "eager":
            if tq is None:
                raise ValueError("flow='eager' needs torch.ao.quantization, which this torch no longer has; use flow='pt2e'")
            engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
            if not isinstance(qconfig, tq.QConfig) and qconfig not in engines:
                raise ValueError(f"qconfig must be a QConfig or one of {engines}, got {qconfig!r}")
        elif flow == "pt2e":
            if qconfig != "x86" and not hasattr(qconfig, "annotate"):
                raise ValueError(f"with flow='pt2e', qconfig must be 'x86' or a torchao Quantizer, got {qconfig!r}")
            if modules_to_fuse:
                raise ValueError("modules_to_fuse is for flow='eager': the PT2E quantizer finds conv+bn+relu "
                                 "and linear+relu in the exported graph itself")
            if not input_compatible:
                raise ValueError("input_compatible=False is for flow='eager': a PT2E graph always takes and returns float tensors")
        else:
            raise ValueError(f"flow must be 'eager' or 'pt2e', got {flow!r}")
        if observer_type not in ("average", "histogram"):
            raise ValueError(f"observer_type must be 'average' or 'histogram', got {observer_type!r}")
        if unknown := set(observer_enabled_stages) - set(self.STAGES):
            raise ValueError(f"observer_enabled_stages: unknown stage(s) {sorted(unknown)}; use {self.STAGES}")
        self.qconfig, self.observer_type, self.flow, self.network = qconfig, observer_type, flow, network
        self.modules_to_fuse = [list(group) for group in modules_to_fuse or []]
        self.input_compatible, self.quantize_on_fit_end = input_compatible, quantize_on_fit_end
        self.observer_enabled_stages = tuple(observer_enabled_stages)
        self._prepared = self._converted = False
        self._float_forward = None  # eager: the module's own forward, before the quant/dequant wrapper
        self._observers_before = {}  # stage -> {fake-quant module: its observer switch before the stage}
        self.fake_quant_state = None  # PT2E: the graph's tensors at convert, from which convert can be repeated

    def prepare(self, pl_module: pl.LightningModule) -> None:
        """Make pl_module a fake-quant model in place (what setup("fit") calls)."""
        if self._prepared:
            return  # fit again (e.g. more epochs): already prepared
        (self._prepare_pt2e if self.flow == "pt2e" else self._prepare_eager)(pl_module)
        self._prepared = True

    def convert(self, pl_module: pl.LightningModule) -> None:
        """Fake-quant to int8, in place, on the CPU (what on_fit_end calls)."""
        (self._convert_pt2e if self.flow == "pt2e" else self._convert_eager)(pl_module)
        self._converted = True

    def _prepare_eager(self, pl_module: pl.LightningModule) -> None:
        submodules = dict(pl_module.named_modules())
        for name in (name for group in self.modules_to_fuse for name in group):
            if name not in submodules:
                raise ValueError(f"modules_to_fuse: {pl_module.__class__.__name__} has no submodule {name!r}")
        pl_module.quant, pl_module.dequant = tq.QuantStub(), tq.DeQuantStub()
        float_forward = self._float_forward = pl_module.forward

        def forward_between_stubs(x):
            return pl_module.dequant(float_forward(pl_module.quant(x)))

        pl_module.forward = forward_between_stubs  # an instance attribute: self(x) in the steps calls it
        pl_module.qconfig = self._make_qconfig()
        pl_module.train()  # fuse_modules_qat keeps BN trainable inside the fused block
        if self.modules_to_fuse:
            tq.fuse_modules_qat(pl_module, self.modules_to_fuse, inplace=True)
        tq.prepare_qat(pl_module, inplace=True)

    def _prepare_pt2e(self, pl_module: pl.LightningModule) -> None:
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
        net = getattr(pl_module, self.network, None)
        if not isinstance(net, nn.Module):
            raise ValueError(f"network: {pl_module.__class__.__name__} has no submodule {self.network!r} to export")
        # Train mode: batch norm and dropout are exported as they run in training.
        graph = prepare_qat_pt2e(export_program(net.train()).module(), self._make_quantizer())
        allow_exported_model_train_eval(graph)  # Lightning's .eval() then switches the graph through torchao
        setattr(pl_module, self.network, graph)

    def _convert_eager(self, pl_module: pl.LightningModule) -> None:
        if isinstance(self.qconfig, str):
            torch.backends.quantized.engine = self.qconfig  # the int8 kernels that run
        tq.convert(pl_module.cpu().eval(), inplace=True)
        if not self.input_compatible:
            pl_module.forward = self._float_forward  # quantized tensors in and out, no stubs

    def _convert_pt2e(self, pl_module: pl.LightningModule) -> None:
        from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e
        graph = getattr(pl_module, self.network).cpu()
        self.fake_quant_state = copy.deepcopy(graph.state_dict())  # deepcopy: keeps the observers' versions
        move_exported_model_to_eval(graph)  # dropout off, batch norm from its running statistics
        converted = convert_pt2e(graph)  # on a CPU about a minute: torchao traces 48 conv-bn patterns
        # Drop the float weights and batch norm statistics that convert_pt2e keeps beside their int8 copies.
        used = {node.target for node in converted.graph.nodes if node.op == "get_attr"}
        for name, _ in [*converted.named_parameters(), *converted.named_buffers()]:
            if name not in used:
                owner, _, attribute = name.rpartition(".")
                delattr(converted.get_submodule(owner), attribute)
        allow_exported_model_train_eval(converted)  # Trainer.test calls .eval()
        setattr(pl_module, self.network, converted)
        pl_module.cpu().eval()

    def _make_qconfig(self):
        if isinstance(self.qconfig, tq.QConfig):
            return self.qconfig
        default = tq.get_default_qat_qconfig(self.qconfig)
        if self.observer_type == "average":
            return default
        # Ranges from a histogram, as PTQ's default observer; x86 and fbgemm keep activations to 7 bits (reduce_range).
        histogram = tq.FakeQuantize.with_args(observer=tq.HistogramObserver, quant_min=0, quant_max=255,
                                              reduce_range=self.qconfig in ("x86", "fbgemm"))
        return tq.QConfig(activation=histogram, weight=default.weight)

    def _make_quantizer(self):
        if not isinstance(self.qconfig, str):
            return self.qconfig
        from torchao.quantization.pt2e import FakeQuantize, HistogramObserver
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
        config = get_default_x86_inductor_quantization_config(is_qat=True)
        if self.observer_type == "histogram":
            # The same fake quantization of activations, its range from a histogram.
            histogram = FakeQuantize.with_args(observer=HistogramObserver, eps=2**-12)
            activation = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=histogram)
            config = dataclasses.replace(config, input_activation=activation, output_activation=activation)
        return X86InductorQuantizer().set_global(config)

    def _fake_quants(self, pl_module: pl.LightningModule) -> list:
        if self.flow == "pt2e":
            from torchao.quantization.pt2e import FakeQuantizeBase
        else:
            FakeQuantizeBase = tq.FakeQuantizeBase
        return [m for m in pl_module.modules() if isinstance(m, FakeQuantizeBase)]

    def _observers_off(self, pl_module, stage: str) -> None:
        if stage in self.observer_enabled_stages:
            return
        fake_quants = self._fake_quants(pl_module)
        self._observers_before[stage] = {m: bool(m.observer_enabled[0]) for m in fake_quants}
        for module in fake_quants:
            module.disable_observer()

    def _observers_restore(self, stage: str) -> None:
        for module, enabled in self._observers_before.pop(stage, {}).items():
            module.enable_observer(enabled)

    def _graph_to_train_mode(self, pl_module) -> None:
        if self.flow == "pt2e" and self._prepared and not self._converted:
            from torchao.quantization.pt2e import move_exported_model_to_train
            move_exported_model_to_train(getattr(pl_module, self.network))

    def setup(self, trainer, pl_module, stage):
        if stage == "fit":
            self.prepare(pl_module)

    def on_fit_end(self, trainer, pl_module):
        if self.quantize_on_fit_end:
            self.convert(pl_module)

    def on_train_start(self, trainer, pl_module):
        self._observers_off(pl_module, "train")

    def on_train_epoch_start(self, trainer, pl_module):
        self._graph_to_train_mode(pl_module)

    def on_train_end(self, trainer, pl_module):
        self._observers_restore("train")

    def on_validation_start(self, trainer, pl_module):
        self._observers_off(pl_module, "validate")

    def on_validation_end(self, trainer, pl_module):
        self._observers_restore("validate")
        if trainer.state.fn == "fit":  # training goes on after this validation
            self._graph_to_train_mode(pl_module)

    def on_test_start(self, trainer, pl_module):
        self._observers_off(pl_module, "test")

    def on_test_end(self, trainer, pl_module):
        self._observers_restore("test")

    def on_predict_start(self, trainer, pl_module):
        self._observers_off(pl_module, "predict")

    def on_predict_end(self, trainer, pl_module):
        self._observers_restore("predict")

    def state_dict(self) -> dict:
        settings = ("observer_type", "modules_to_fuse", "input_compatible", "quantize_on_fit_end",
                    "observer_enabled_stages", "flow", "network")
        state = {name: getattr(self, name) for name in settings}
        if isinstance(self.qconfig, str):  # a QConfig or Quantizer object holds classes, not data
            state["qconfig"] = self.qconfig
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)


# Conv+BN+ReLU and Linear+ReLU, named from the LightningModule: each becomes one int8 kernel (eager flow).
MODULES_TO_FUSE = [["model.features.0", "model.features.1", "model.features.2"],
                   ["model.features.4", "model.features.5", "model.features.6"],
                   ["model.classifier.1", "model.classifier.2"]]


# Copied from quant_lightning_ptq.py
EAGER_DEPRECATION = ("note: torch.ao.quantization is deprecated and will be removed from torch: --flow eager "
                     "stops working then; --flow pt2e does the same with torchao")


# Copied from quant_lightning_ptq.py
def export_program(net: nn.Module) -> torch.export.ExportedProgram:
    """torch.export for any batch size (an example batch of 2 keeps that dimension symbolic)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(net, (torch.zeros(2, 1, 28, 28),), dynamic_shapes={"x": {0: batch}})


# Copied from quant_lightning_ptq.py
def compile_for_inference(net: nn.Module) -> nn.Module:
    """torch.compile with frozen weights, so Inductor fuses an int8 graph's q/dq patterns into int8 kernels."""
    torch._inductor.config.freezing = True
    return torch.compile(net, dynamic=False)  # torch 2.14's int8 conv lowering fails on a symbolic batch size


# %% [markdown]
# ## Training
# The Trainer of one phase (float or QAT); each logs to a new csv_logs / tb_logs version.

# %% Training
def new_module(args, lr: float) -> MNISTClassifier:
    """A float MNISTClassifier from the flags, training with learning rate lr."""
    return MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                           lr=lr, val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)


# Copied from quant_lightning_qat.py
def build_trainer(args, out: Path, epochs: int, callbacks: list) -> pl.Trainer:
    """The Trainer of one phase (float or QAT); each logs to a new csv_logs / tb_logs version."""
    with exit_on_error("cannot build the Trainer from these flags"):
        return pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes,
            precision=args.precision, max_epochs=epochs, plugins=[AtomicCheckpointIO()], fast_dev_run=args.fast_dev_run,
            logger=[CSVLogger(out, name="csv_logs"), TensorBoardLogger(out, name="tb_logs")],
            callbacks=callbacks, enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            limit_train_batches=args.limit_train_batches, limit_val_batches=args.limit_val_batches, deterministic=True)


# Copied from quant_lightning_qat.py
def leave_training(trainer: pl.Trainer) -> bool:
    """Undo what training switched on for the whole process; True on the process that goes on."""
    torch.use_deterministic_algorithms(False)  # deterministic=True's process-wide mode: int8 ops refuse to run in it
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # rank 0 alone goes on; an open group can abort the exit
    return trainer.is_global_zero


# %% [markdown]
# ## Saving and loading the int8 module
# Eager: state_dicts; PT2E: the exported programs. Both hold the callback's settings and the tensors to rebuild it.

# %% Saving and loading the int8 module
def save_int8_module(int8_model: MNISTClassifier, float_net: nn.Module, qcb: QuantizationAwareTraining, out: Path) -> tuple:
    """mnist_fp32 and mnist_int8, .pt (eager) or .pt2 (PT2E); their sizes in KiB (of a .pt2, its program)."""
    rebuild = {"callback": qcb.state_dict(), "backend": qcb.qconfig, "hidden_units": int8_model.hparams.hidden_units}
    if qcb.flow == "eager":
        save_atomically(float_net.state_dict(), out / "mnist_fp32.pt")
        save_atomically({"state_dict": int8_model.state_dict(), **rebuild}, out / "mnist_int8.pt")
        return (out / "mnist_fp32.pt").stat().st_size / 1024, (out / "mnist_int8.pt").stat().st_size / 1024
    return (save_program(export_program(float_net), out / "mnist_fp32.pt2") / 1024,
            save_program(export_program(getattr(int8_model, qcb.network)), out / "mnist_int8.pt2",
                         {"state_dict": qcb.fake_quant_state, **rebuild}) / 1024)


def load_int8_into(model: MNISTClassifier, path: str, flow: str) -> None:
    """Make a float MNISTClassifier the int8 module in the file, rebuilt by the callback from its tensors alone."""
    saved = read_int8_file(path, flow)
    if not isinstance(saved.get("callback"), dict):
        die(f"{path} is not an int8 model saved by this script (no 'callback' entry)")
    if saved["hidden_units"] != model.hparams.hidden_units:
        model.model = MNISTConvBNNet(saved["hidden_units"])
    try:  # rebuild the int8 module with the callback's own settings
        qcb = QuantizationAwareTraining(**{**saved["callback"], "qconfig": saved["backend"], "flow": flow, "network": "model"})
    except (TypeError, ValueError) as error:
        die(f"{path} holds callback settings this script cannot use ({first_line(error)})")
    try:
        qcb.prepare(model)
        if flow == "pt2e":  # the fake-quant graph's tensors as QAT left them: convert repeats the run's
            model.model.load_state_dict(saved["state_dict"])
            qcb.convert(model)
            model.model = compile_for_inference(model.model)
            return
        with torch.no_grad():
            model.eval()(torch.zeros(2, 1, 28, 28))  # observers need one batch before convert; values get replaced
        qcb.convert(model)
        model.load_state_dict(saved["state_dict"])  # every int8 weight, scale and zero point
    except Exception as error:
        die(f"{path} does not hold an int8 MNISTClassifier written by this script ({first_line(error)})")


# %% [markdown]
# ## Testing and timing the int8 module
# Test accuracy by a plain PyTorch loop and by `Trainer.test` on the same batches; latency on the CPU.

# %% Testing and timing the int8 module
def test_int8_module(model: MNISTClassifier, tester: pl.Trainer, args) -> float:
    """The int8 module's test accuracy by a plain PyTorch loop and by Trainer.test, on the same batches."""
    model.setup("test")
    loader = model.test_dataloader()
    limit = args.fast_dev_run or args.limit_test_batches  # the batches Trainer.test will see
    count = min(limit, len(loader)) if isinstance(limit, int) else int(len(loader) * limit)
    with torch.inference_mode():  # the module, its stubs included
        hits = torch.cat([model(images).argmax(dim=1) == labels for _, (images, labels) in zip(range(count), loader)])
    print(f"int8 accuracy, plain PyTorch loop: {hits.sum().item() / len(hits):.4f}")
    accuracy = tester.test(model, verbose=False)[0]["test_acc"]
    print(f"int8 accuracy, Trainer.test:       {accuracy:.4f}")
    return accuracy


# Copied from quant_lightning_ptq.py
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


# Copied from quant_lightning_ptq.py
LATENCY_WARMUP = 10  # rounds of every model before timing starts: compiling, caches, CPU clock ramping up
# Copied from quant_lightning_ptq.py
LATENCY_BUSY = 0.25  # an interquartile range above this fraction of the median: the machine was busy


# Copied from quant_lightning_ptq.py
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
    model = new_module(args, lr=args.lr)
    if args.named_modules or args.named_parameters:
        print_structure(model, args.named_modules, args.named_parameters)
        return 0
    if args.flow == "eager":
        print(EAGER_DEPRECATION)
    if args.load_int8:  # read the model first: a bad file fails before any data is touched
        load_int8_into(model, args.load_int8, args.flow)
        print(f"reloaded {args.load_int8}")
    elif args.ckpt:
        load_weights(model, args.ckpt)
    check_flags_fit_the_data(args, prepare_mnist(args.data_dir), training=not args.load_int8)
    if str(args.precision) not in ("32-true", "32"):  # fake quantization observes and rounds float32 tensors
        die(f"--precision {args.precision}: quantization-aware training runs in float32; leave --precision out")
    # int8 kernels here are CPU kernels: every test runs on one CPU device, float and int8 alike.
    with exit_on_error("cannot build the test Trainer from these flags"):
        tester = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, fast_dev_run=args.fast_dev_run,
                            limit_test_batches=args.limit_test_batches)
    if args.load_int8:
        test_int8_module(model, tester, args)
        return 0

    histories = []
    if not args.ckpt:  # phase 1: train the float network and keep its best epoch
        checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best",
                                     monitor="valid_acc", mode="max", enable_version_counter=False)
        trainer = build_trainer(args, out, args.epochs, callbacks=[checkpoint])
        with exit_if_interrupted(trainer), exit_if_write_fails(out):
            trainer.fit(model)
        if checkpoint.best_model_path:
            load_weights(model, checkpoint.best_model_path)
        histories.append(phase_history(trainer, "fp32"))
    float_net = copy.deepcopy(model.model).cpu().eval()  # before the callback changes model

    # Phase 2: the trained network in a module whose learning rate is QAT's (fine-tuning: smaller),
    # fit with the callback; it is int8 when fit returns.
    qat_model = new_module(args, lr=args.qat_lr)
    qat_model.model.load_state_dict(float_net.state_dict())
    eager = args.flow == "eager"
    qcb = QuantizationAwareTraining(qconfig=args.backend if eager else "x86", observer_type=args.observer_type,
                                    modules_to_fuse=MODULES_TO_FUSE if eager else None, input_compatible=True,
                                    quantize_on_fit_end=True, observer_enabled_stages=("train",), flow=args.flow)
    trainer = build_trainer(args, out, args.qat_epochs, callbacks=[qcb])
    with exit_if_interrupted(trainer), exit_if_write_fails(out):
        trainer.fit(qat_model)
    histories.append(phase_history(trainer, "qat"))
    if not leave_training(trainer):
        return 0  # a DDP rank other than 0: rank 0 reports
    out.mkdir(parents=True, exist_ok=True)
    report_history(histories, out)

    model.model = float_net
    fp32_acc = tester.test(model, verbose=False)[0]["test_acc"]
    print(f"\nfp32 accuracy: {fp32_acc:.4f}")
    fp32_kb, int8_kb = save_int8_module(qat_model, float_net, qcb, out)
    if not eager:
        qat_model.model = compile_for_inference(qat_model.model)
    int8_acc = test_int8_module(qat_model, tester, args)
    latency = measure_latency(float_net, qat_model, qat_model.test_set.tensors[0], args.threads,
                              args.latency_repeats)
    method, backend = ("QAT callback", args.backend) if eager else ("QAT callback PT2E", "x86 inductor")
    append_result(dict(method=method, backend=backend, threads=args.threads, fp32_acc=fp32_acc, int8_acc=int8_acc,
                       fp32_kb=fp32_kb, int8_kb=int8_kb, size_ratio=int8_kb / fp32_kb, **latency), out / RESULTS_FILE)
    print_outputs(out, before)
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Add a QuantizationAwareTraining callback to the Trainer and get an int8 MNIST CNN after fit.",
                                     formatter_class=DefaultsHelpFormatter)
    parser.error = die  # every bad flag value: one line, exit 2
    data = parser.add_argument_group("data and outputs")
    data.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                      help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    data.add_argument("--output_dir", "--output-dir", type=output_folder, default="outputs/quant_with_only_lightning",
                      help="where logs, models and quant_results.csv go")
    data.add_argument("--val_size", "--val-size", type=number(int, min=1), default=5000, help="training images held out for validation")
    data.add_argument("--num_workers", "--num-workers", type=number(int, min=0), default=0, help="DataLoader worker processes")
    train = parser.add_argument_group("training")
    train.add_argument("--batch_size", "--batch-size", type=number(int, min=1), default=128, metavar="N", help="training batch size")
    train.add_argument("--eval_batch_size", "--eval-batch-size", "--test_batch_size", "--test-batch-size",
                       type=number(int, min=1), metavar="N", help="validation and test batch size (default: --batch_size)")
    train.add_argument("--epochs", type=number(int, min=1), default=3, metavar="N", help="float epochs before QAT")
    train.add_argument("--lr", type=number(float, above=0), default=0.01, help="peak learning rate of the float phase (one-cycle)")
    train.add_argument("--seed", type=number(int, min=0, max=2**32 - 1), default=42, help="seeds weights, split and shuffling")
    quant = parser.add_argument_group("quantization")
    quant.add_argument("--flow", choices=["eager", "pt2e"], default=None,
                       help="the callback's mode: eager (torch.ao.quantization, deprecated) or pt2e (torch.export + "
                            "torchao + torch.compile); default: eager, or with --load_int8 the kind of file given")
    quant.add_argument("--ckpt", metavar="PATH", type=existing_file,
                       help="start QAT from this float checkpoint (.ckpt or mnist_fp32.pt) instead of training the float model first")
    quant.add_argument("--qat_epochs", "--qat-epochs", type=number(int, min=1), default=2, metavar="N", help="fake-quant epochs")
    quant.add_argument("--qat_lr", "--qat-lr", type=number(float, above=0), default=0.001, help="peak learning rate of the QAT phase")
    quant.add_argument("--observer_type", "--observer-type", choices=["average", "histogram"], default="average",
                       help="how the callback measures activation ranges")
    quant.add_argument("--backend", default="x86", choices=[e for e in torch.backends.quantized.supported_engines if e != "none"],
                       help="eager flow: the callback's qconfig, a quantized engine with its default QAT qconfig")
    quant.add_argument("--load_int8", "--load-int8", metavar="PATH", type=existing_file,
                       help="test a saved int8 module (mnist_int8.pt, or mnist_int8.pt2 from --flow pt2e) and exit")
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
        "no effect: training always ends with a test now; to test a saved int8 module use --load_int8"))
    original.add_argument("--gamma", action=OriginalTutorialFlag, type=float, note=(
        "no effect: the learning rate follows a one-cycle schedule, not StepLR's decay by gamma"))
    original.add_argument("--log-interval", "--log_interval", action=OriginalTutorialFlag, type=number(int, min=1), note=(
        "no effect: metrics are logged once per epoch; the progress bar shows the running loss"))
    original.add_argument("--save_model", "--save-model", action="store_true",
                          help="no effect here: the float and the int8 model are always saved")
    original.add_argument("--load_model", "--load-model", metavar="PATH", type=existing_file,
                          help="the float weights to start QAT from instead of training: the same as --ckpt")
    args = parser.parse_args(argv)
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    if args.save_model:
        print("note: --save_model (from the original tutorial): no effect, this script always saves "
              "mnist_fp32 and mnist_int8", file=sys.stderr)
    if args.load_model and args.ckpt and args.ckpt != args.load_model:
        die("--load_model and --ckpt both name the float weights to start QAT from; pass one of them")
    args.ckpt = args.ckpt or args.load_model
    saved = args.load_int8 and saved_flow(args.load_int8)
    if saved and args.flow not in (None, saved):
        die(f"--flow {args.flow}, but {args.load_int8} was saved by --flow {saved}; pass --flow {saved}, or leave --flow out")
    args.flow = saved or args.flow or "eager"
    check_flow_is_installed(args.flow)
    return args


# Copied from quant_lightning_qat.py
def check_flow_is_installed(flow: str) -> None:
    if flow == "eager" and tq is None:
        die("--flow eager needs torch.ao.quantization, which this torch no longer has; use --flow pt2e")
    if flow == "pt2e" and importlib.util.find_spec("torchao") is None:
        die("--flow pt2e needs torchao: pip install torchao (pinned in requirements-dev.txt)")


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


# Copied from quant_lightning_qat.py
def phase_history(trainer: pl.Trainer, phase: str) -> pd.DataFrame:
    """The phase's per-epoch table from its CSVLogger (empty off rank 0 and under --fast_dev_run)."""
    if trainer.fast_dev_run or not trainer.is_global_zero:
        return pd.DataFrame()
    return epoch_history(Path(trainer.loggers[0].log_dir, "metrics.csv")).assign(phase=phase)


# Copied from quant_lightning_qat.py
def report_history(histories: list, out: Path) -> None:
    """Both phases' per-epoch table: printed, saved as history.csv, drawn as loss.png and acc.png."""
    history = pd.concat(histories, ignore_index=True).rename_axis("epoch")
    if history.empty:
        return
    print("\n" + history.to_string(float_format="{:.4f}".format))
    write_atomically(out / "history.csv", history.to_csv)
    both = len(histories) == 2
    plot_history(history, out, title="MNIST, float then QAT" if both else "MNIST, QAT",
                 xlabel="epoch (float training, then QAT fine-tuning)" if both else "QAT fine-tuning epoch")


# Copied from quant_lightning_ptq.py
RESULTS_FILE = "quant_results.csv"
# Copied from quant_lightning_ptq.py
RESULT_COLUMNS = ["method", "backend", "threads", "fp32_acc", "int8_acc", "fp32_kb", "int8_kb", "size_ratio",
                  *(f"{name}_b{batch}" for batch in (1, 256) for name in
                    ("fp32_ms", "fp32_compiled_ms", "int8_ms", "speedup", "speedup_compiled")), "spread_b1", "spread_b256"]


# Copied from quant_lightning_ptq.py
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


# Copied from quant_lightning_ptq.py
def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# Copied from quant_lightning_ptq.py
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


# Copied from quant_lightning_ptq.py
INT8_STATE = "mnist_int8/state.pt"  # in a .pt2 this script wrote: what --load_int8 reads, a torch.save dict


# Copied from quant_lightning_ptq.py
MAX_INT8_BYTES = 2**30  # far above what this script writes


# Copied from quant_lightning_ptq.py
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


# Copied from quant_lightning_ptq.py
def saved_flow(path: str) -> str:
    """pt2e for a torch.export archive (or a file named .pt2), eager for anything else (torch.save)."""
    with contextlib.suppress(OSError, zipfile.BadZipFile):
        with zipfile.ZipFile(path) as archive:
            return "pt2e" if any(name.endswith("/archive_format") for name in archive.namelist()) else "eager"
    return "pt2e" if path.endswith(".pt2") else "eager"


# Copied from quant_lightning_ptq.py
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
