"""
Title: Quantization-aware training with only a Lightning callback
Description: Add a QuantizationAwareTraining callback to the Trainer and get an int8 MNIST CNN after fit.

What it teaches
    Lightning 1.x had a `QuantizationAwareTraining` callback; Lightning 2.0 removed it. This script
    writes one (the Callbacks section, about 150 lines) with the constructor people know, and
    uses it on a LightningModule that contains no quantization code at all: the user adds
    `callbacks=[qcb]` and, when `fit` returns, the module is int8. The callback's docstring lists
    which Lightning hook does what. The int8 module is then tested with a plain loop and with
    `Trainer.test`, saved, reloaded by rebuilding it with the same callback, and timed on the CPU.

How to run
    python quant_with_only_lightning.py                          # 3 float epochs, 2 QAT epochs, int8
    python quant_with_only_lightning.py --data_dir ../shared/data
    python quant_with_only_lightning.py --ckpt outputs/quant_lightning_ptq/checkpoints/best.ckpt
    python quant_with_only_lightning.py --observer_type histogram --qat_epochs 1
    python quant_with_only_lightning.py --load_int8 outputs/quant_with_only_lightning/mnist_int8.pt

What it writes (under --output_dir, default outputs/quant_with_only_lightning)
    csv_logs/version_N/, tb_logs/version_N/   one version per phase: the float run, then the QAT run
    checkpoints/best.ckpt                     the float phase's best epoch (the QAT phase keeps its last)
    history.csv, loss.png, acc.png            the per-epoch table of both phases and its curves
    mnist_fp32.pt, mnist_int8.pt              state_dicts of the float network and the int8 LightningModule
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
class MNISTConvNet(nn.Module):
    """Two conv-BN-ReLU blocks and a linear-ReLU head: 1x28x28 image in, 10 class logits out."""

    def __init__(self, hidden_units: int = 256, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 32x14x14
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 32x7x7
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
    """A plain training recipe: nothing here knows about quantization."""

    def __init__(self, data_dir: str = "data", batch_size: int = 128, lr: float = 0.01, hidden_units: int = 256,
                 dropout: float = 0.25, val_size: int = 5000, num_workers: int = 0, seed: int = 42):
        super().__init__()
        self.save_hyperparameters()  # plain types only: checkpoints load with weights_only=True
        self.model = MNISTConvNet(hidden_units, dropout)
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.valid_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The callback quantizes what forward computes, so forward stops at the logits: log_softmax
        # (inside cross_entropy) has no int8 kernel and stays in the steps, in float.
        return self.model(x)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
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


# %% Callbacks
class QuantizationAwareTraining(pl.Callback):
    """Quantization-aware training as a callback: after `Trainer(callbacks=[qcb]).fit(model)`, model is int8.

    Args:
        qconfig: a quantized engine name ("x86", "fbgemm", "onednn", "qnnpack"), whose default QAT
            qconfig is used, or a ready `torch.ao.quantization.QConfig`.
        observer_type: how activation ranges are measured with a named qconfig: "average" (moving
            average of min/max, the QAT default) or "histogram" (HistogramObserver: slower, ignores outliers).
        modules_to_fuse: groups of module names relative to the LightningModule, e.g.
            [["model.features.0", "model.features.1", "model.features.2"]]; each group (conv+bn+relu,
            conv+relu, linear+relu, ...) is fused into one module, and after convert one int8 kernel.
        input_compatible: True: the int8 module still takes and returns float tensors (the quantize and
            dequantize steps stay in forward). False: forward takes and returns quantized tensors.
        quantize_on_fit_end: convert to int8 when fit ends. False leaves the fake-quant model (to train
            more, or to inspect); `qcb.convert(model)` converts it later.
        observer_enabled_stages: stages ("train", "validate", "test", "predict") in which observers
            update the int8 ranges; in the others they are switched off, and restored afterwards.

    How it works, hook by hook:
        setup(stage="fit")     runs before the Trainer creates the optimizer: adds `quant` (QuantStub) and
                               `dequant` (DeQuantStub) to the module and wraps its forward between them,
                               sets the qconfig, fuses `modules_to_fuse`, and calls `prepare_qat`, which
                               swaps in fake-quant modules that keep the same parameters.
        on_<stage>_start/_end  switch observers off for stages not in `observer_enabled_stages`, then
                               restore them (validation inside fit included).
        on_fit_end             `convert` on the CPU: BN folded, weights and ranges frozen into int8 modules.
        state_dict             the settings, stored in Lightning checkpoints and in the saved int8 file.
    """

    STAGES = ("train", "validate", "test", "predict")

    def __init__(self, qconfig="x86", observer_type: str = "average", modules_to_fuse=None,
                 input_compatible: bool = True, quantize_on_fit_end: bool = True,
                 observer_enabled_stages=("train",)):
        engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
        if not isinstance(qconfig, tq.QConfig) and qconfig not in engines:
            raise ValueError(f"qconfig must be a QConfig or one of {engines}, got {qconfig!r}")
        if observer_type not in ("average", "histogram"):
            raise ValueError(f"observer_type must be 'average' or 'histogram', got {observer_type!r}")
        unknown = set(observer_enabled_stages) - set(self.STAGES)
        if unknown:
            raise ValueError(f"observer_enabled_stages: unknown stage(s) {sorted(unknown)}; use {self.STAGES}")
        self.qconfig = qconfig
        self.observer_type = observer_type
        self.modules_to_fuse = [list(group) for group in modules_to_fuse or []]
        self.input_compatible = input_compatible
        self.quantize_on_fit_end = quantize_on_fit_end
        self.observer_enabled_stages = tuple(observer_enabled_stages)
        self._float_forward = None  # the module's own forward, before the quant/dequant wrapper; set once prepared
        self._observers_before = {}  # stage -> {fake-quant module: its observer switch before the stage}

    def prepare(self, pl_module: pl.LightningModule) -> None:
        """Make pl_module a fake-quant model in place (what setup("fit") calls)."""
        if self._float_forward is not None:
            return  # fit again (e.g. more epochs): already prepared
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

    def convert(self, pl_module: pl.LightningModule) -> None:
        """Fake-quant to int8, in place, on the CPU (what on_fit_end calls)."""
        if isinstance(self.qconfig, str):
            torch.backends.quantized.engine = self.qconfig  # the int8 kernels that run
        tq.convert(pl_module.cpu().eval(), inplace=True)
        if not self.input_compatible:
            pl_module.forward = self._float_forward  # quantized tensors in and out, no stubs

    def _make_qconfig(self) -> tq.QConfig:
        if isinstance(self.qconfig, tq.QConfig):
            return self.qconfig
        default = tq.get_default_qat_qconfig(self.qconfig)
        if self.observer_type == "average":
            return default
        # The same fake quantization, its range from a histogram (as PTQ's default observer does).
        # x86 and fbgemm keep activations to 7 bits (reduce_range), like their default qconfigs.
        histogram = tq.FakeQuantize.with_args(observer=tq.HistogramObserver, quant_min=0, quant_max=255,
                                              reduce_range=self.qconfig in ("x86", "fbgemm"))
        return tq.QConfig(activation=histogram, weight=default.weight)

    def _observers_off(self, pl_module, stage: str) -> None:
        if stage in self.observer_enabled_stages:
            return
        fake_quants = [m for m in pl_module.modules() if isinstance(m, tq.FakeQuantizeBase)]
        self._observers_before[stage] = {m: bool(m.observer_enabled[0]) for m in fake_quants}
        for module in fake_quants:
            module.disable_observer()

    def _observers_restore(self, stage: str) -> None:
        for module, enabled in self._observers_before.pop(stage, {}).items():
            module.enable_observer(enabled)

    def setup(self, trainer, pl_module, stage):
        if stage == "fit":
            self.prepare(pl_module)

    def on_fit_end(self, trainer, pl_module):
        if self.quantize_on_fit_end:
            self.convert(pl_module)

    def on_train_start(self, trainer, pl_module):
        self._observers_off(pl_module, "train")

    def on_train_end(self, trainer, pl_module):
        self._observers_restore("train")

    def on_validation_start(self, trainer, pl_module):
        self._observers_off(pl_module, "validate")

    def on_validation_end(self, trainer, pl_module):
        self._observers_restore("validate")

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
                    "observer_enabled_stages")
        state = {name: getattr(self, name) for name in settings}
        if isinstance(self.qconfig, str):  # a QConfig object holds classes, not data
            state["qconfig"] = self.qconfig
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)


# %% Main
# Conv+BN+ReLU and Linear+ReLU, named from the LightningModule: each becomes one int8 kernel.
FUSE_GROUPS = [["model.features.0", "model.features.1", "model.features.2"],
               ["model.features.4", "model.features.5", "model.features.6"],
               ["model.classifier.1", "model.classifier.2"]]


def main(argv=None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    out = Path(args.output_dir)
    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, lr=args.lr,
                            val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
    if args.load_int8:  # read the model first: a bad file fails before any data is touched
        load_int8(model, args.load_int8)
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
        _, history = fit(model, args, out, args.epochs, callbacks=[])
        histories.append(history.assign(phase="fp32"))
    float_model = copy.deepcopy(model).cpu().eval()  # before the callback changes model

    qcb = QuantizationAwareTraining(qconfig=args.backend, observer_type=args.observer_type,
                                    modules_to_fuse=FUSE_GROUPS, input_compatible=True,
                                    quantize_on_fit_end=True, observer_enabled_stages=("train",))
    model.hparams.lr = args.qat_lr  # fine-tuning a trained model: a smaller learning rate
    trainer, history = fit(model, args, out, args.qat_epochs, callbacks=[qcb])  # model is int8 after this
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

    fp32_acc = tester.test(float_model, verbose=False)[0]["test_acc"]
    print(f"\nfp32 accuracy: {fp32_acc:.4f}")
    int8_acc = test_int8(model, tester, args)

    torch.save(float_model.model.state_dict(), out / "mnist_fp32.pt")
    torch.save({"state_dict": model.state_dict(), "callback": qcb.state_dict(),
                "hidden_units": model.hparams.hidden_units}, out / "mnist_int8.pt")
    fp32_kb, int8_kb = ((out / name).stat().st_size / 1024 for name in ("mnist_fp32.pt", "mnist_int8.pt"))
    latency = measure_latency(float_model.model, model, model.test_set.tensors[0], args.threads,
                              args.latency_repeats)
    row = dict(method="QAT callback", backend=args.backend, threads=args.threads, fp32_acc=fp32_acc,
               int8_acc=int8_acc, fp32_kb=fp32_kb, int8_kb=int8_kb, size_ratio=int8_kb / fp32_kb, **latency)
    append_result(row, out / RESULTS_FILE)
    print(f"\nOutputs in {out.resolve()}:")
    for path in sorted(out.glob("*")):
        print(f"  {path.name}{'/' if path.is_dir() else ''}")
    return 0


def fit(model: MNISTClassifier, args, out: Path, epochs: int, callbacks: list):
    """One training phase; the float phase (no callbacks) keeps its best epoch, QAT its last."""
    keep_best = not callbacks
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best",
                                 monitor="valid_acc", mode="max", enable_version_counter=False)
    csv_logger = CSVLogger(out, name="csv_logs")
    try:
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
            num_nodes=args.num_nodes, precision=args.precision, max_epochs=epochs,
            logger=[csv_logger, TensorBoardLogger(out, name="tb_logs")],
            callbacks=[checkpoint] if keep_best else callbacks, enable_checkpointing=keep_best,
            fast_dev_run=args.fast_dev_run, limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches, deterministic=True)
    except (ValueError, RuntimeError) as error:  # e.g. --accelerator gpu on a machine without one
        die(f"cannot build the Trainer: {error}")
    trainer.fit(model)
    if keep_best and checkpoint.best_model_path:
        load_weights(model, checkpoint.best_model_path)
    history = pd.DataFrame() if args.fast_dev_run else epoch_history(Path(csv_logger.log_dir, "metrics.csv"))
    return trainer, history


def load_int8(model: MNISTClassifier, path: str) -> None:
    """Rebuild the int8 module with the callback's own settings, then load the saved int8 weights."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        die(f"cannot read {path} ({error.__class__.__name__}); pass a mnist_int8.pt written by this script")
    if not isinstance(saved, dict) or "callback" not in saved:
        die(f"{path} is not an int8 model saved by this script (no 'callback' entry)")
    if saved["hidden_units"] != model.hparams.hidden_units:
        model.model = MNISTConvNet(saved["hidden_units"])
    qcb = QuantizationAwareTraining(**saved["callback"])
    qcb.prepare(model)
    with torch.no_grad():
        model.eval()(torch.zeros(2, 1, 28, 28))  # observers need one batch before convert; values get replaced
    qcb.convert(model)
    try:
        model.load_state_dict(saved["state_dict"])  # every int8 weight, scale and zero point
    except (RuntimeError, KeyError) as error:
        die(f"{path} does not hold an int8 MNISTClassifier ({str(error).strip().splitlines()[0]})")


def test_int8(model: MNISTClassifier, tester: pl.Trainer, args) -> float:
    """The int8 accuracy twice: a plain PyTorch loop, then Trainer.test on the same batches."""
    model.setup("test")
    loader = model.test_dataloader()
    limit = args.fast_dev_run or args.limit_test_batches  # the batches Trainer.test will see
    count = min(limit, len(loader)) if isinstance(limit, int) else int(len(loader) * limit)
    correct = seen = 0
    with torch.inference_mode():
        for (images, labels), _ in zip(loader, range(count)):
            correct += (model(images).argmax(dim=1) == labels).sum().item()
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
    """Load a Lightning .ckpt (or a .pt state_dict) of the float MNISTConvNet into model.model."""
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
        die(f"{path} does not hold float weights for MNISTConvNet ({first_line})")


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
    data.add_argument("--output_dir", "--output-dir", default="outputs/quant_with_only_lightning",
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
    quant.add_argument("--observer_type", "--observer-type", choices=["average", "histogram"], default="average",
                       help="how the callback measures activation ranges")
    quant.add_argument("--backend", default="x86", choices=[e for e in torch.backends.quantized.supported_engines
                                                             if e != "none"],
                       help="the callback's qconfig: a quantized engine, with its default QAT qconfig")
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
    if args.num_workers < 0 or args.latency_repeats < 0:
        die("--num_workers and --latency_repeats cannot be negative")
    for flag in ("ckpt", "load_int8"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            die(f"--{flag} {path}: no such file")
    return args


if __name__ == "__main__":
    sys.exit(main())
