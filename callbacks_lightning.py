"""
Title: Lightning callbacks: a catalogue and a demo
Description: Read what every built-in callback does, then train MNIST with a chosen set of them.

What it teaches
    Callbacks add behaviour to the Trainer without touching the LightningModule. --info and --list
    describe every callback Lightning ships (signature, docstring, the hooks it implements). The
    demo trains with EarlyStopping, LearningRateMonitor, ModelSummary, Timer,
    GradientAccumulationScheduler, EMAWeightAveraging, LambdaCallback, ModelCheckpoint,
    LearningRateFinder and a custom Callback that prints each 2.x hook as it runs, then reports
    what each one did. The 1.x hooks that no longer exist are listed in REMOVED_HOOKS.

How to run
    python callbacks_lightning.py --list                                   # the catalogue as a table
    python callbacks_lightning.py --info                                   # one file per callback
    python callbacks_lightning.py --data_dir ../shared/data                # the demo, 3 epochs
    python callbacks_lightning.py --stop_at_acc 0.985                      # EarlyStopping ends the run early
    python callbacks_lightning.py --callbacks hooks,lr_finder,checkpoint   # choose the callbacks
    python callbacks_lightning.py --callbacks hooks --raise_at_step 5      # watch on_exception run

What it writes (under --output_dir, default outputs/callbacks_lightning)
    callbacks_info/AVAILABLE.txt     with --info: every callback and a one-line summary
    callbacks_info/<Name>.txt        with --info: signature, summary and hooks of each callback
    csv_logs/version_N/metrics.csv   every logged value, the learning rate (lr-AdamW) included
    tb_logs/version_N/               the same for TensorBoard
    checkpoints/best.ckpt            ModelCheckpoint: the epoch with the best valid_acc
    history.csv, loss.png, acc.png   the per-epoch table and its curves
"""

# %% Imports
import argparse
import contextlib
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
import pandas as pd
import pytorch_lightning as pl
import pytorch_lightning.callbacks as pl_callbacks
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import (Callback, EarlyStopping, EMAWeightAveraging, GradientAccumulationScheduler,
                                         LambdaCallback, LearningRateFinder, LearningRateMonitor, ModelCheckpoint,
                                         ModelSummary, RichModelSummary, Timer)
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import grad_norm
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import Accuracy
from torchvision.datasets import MNIST

# The data are tensors in memory, so loader workers have nothing to speed up (see the README's
# data-pipeline benchmark); Lightning's hint about adding workers would only be noise here.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 calls a pytree check that torch 2.14 deprecates; nothing a user can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


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
    """The training recipe around MNISTConvNet. It knows nothing about the callbacks around it."""

    def __init__(self, data_dir: str = "data", batch_size: int = 128, lr: float = 0.01,
                 val_size: int = 5000, num_workers: int = 0, seed: int = 42):
        super().__init__()
        self.save_hyperparameters()  # plain types only; LearningRateFinder rewrites hparams.lr
        self.model = MNISTConvNet()
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.valid_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)
        self.example_input_array = torch.zeros(2, 1, 28, 28)  # ModelSummary shows in/out sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        self.log("valid_acc", self.valid_acc, prog_bar=True)  # EarlyStopping and ModelCheckpoint watch it

    def test_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("test_loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.test_acc.update(logits, labels)

    def on_test_epoch_end(self):
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        # Sized in epochs, not steps: GradientAccumulationScheduler changes the number of optimizer
        # steps per epoch after this runs, so a step-based plan (OneCycle) would be sized wrong.
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

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


# %% Callbacks
# Lightning 1.x hooks that 2.x no longer calls, and where their code goes now. A method with one of
# these names on a 2.x Callback raises no error: it is silently never called.
REMOVED_HOOKS = {
    "on_init_start": "the callback's __init__ (the Trainer no longer announces its own construction)",
    "on_init_end": "the callback's __init__, or setup(trainer, pl_module, stage)",
    "on_configure_sharded_model": "setup(), or LightningModule.configure_model",
    "on_before_accelerator_backend_setup": "setup(trainer, pl_module, stage)",
    "on_pretrain_routine_start": "on_fit_start",
    "on_pretrain_routine_end": "on_fit_start",
    "on_epoch_start": "on_train_epoch_start / on_validation_epoch_start / on_test_epoch_start",
    "on_epoch_end": "on_train_epoch_end / on_validation_epoch_end / on_test_epoch_end",
    "on_batch_start": "on_train_batch_start",
    "on_batch_end": "on_train_batch_end",
    "on_keyboard_interrupt": "on_exception (check isinstance(exception, KeyboardInterrupt))",
}
# Everything a Callback can override, in the order Callback defines them.
HOOKS = [name for name in vars(Callback) if name.startswith("on_") or name in
         ("setup", "teardown", "state_dict", "load_state_dict")]


class HookReporter(Callback):
    """A custom Callback: prints each 2.x hook when Lightning calls it, numbered, so the order shows.

    Per-batch hooks are counted rather than printed. --raise_at_step makes training fail on purpose
    so that on_exception runs.
    """

    def __init__(self, raise_at_step=None):
        self.calls = 0
        self.train_batches = 0
        self.raise_at_step = raise_at_step

    def _say(self, pl_module, hook: str, detail: str = "") -> None:
        self.calls += 1
        pl_module.print(f"  [hook {self.calls:2d}] {hook}{detail}")  # prints on rank 0 only

    def setup(self, trainer, pl_module, stage):
        self._say(pl_module, "setup", f"(stage={getattr(stage, 'value', stage)!r})")
        for callback in trainer.callbacks:
            for old in REMOVED_HOOKS.keys() & set(dir(callback)):
                pl_module.print(f"  warning: {type(callback).__name__}.{old} is never called in Lightning 2.x; "
                                f"move it to {REMOVED_HOOKS[old]}")

    def on_fit_start(self, trainer, pl_module):
        # trainer.callbacks is the run order: Lightning moves tuner callbacks first and checkpoints last.
        self._say(pl_module, "on_fit_start", "  callbacks run in this order: "
                  + ", ".join(type(callback).__name__ for callback in trainer.callbacks))

    def on_sanity_check_end(self, trainer, pl_module):
        batches = sum(trainer.num_sanity_val_batches)  # num_sanity_val_steps (2), or fewer if the loader is shorter
        self._say(pl_module, "on_sanity_check_end",
                  f"  ({batches} validation batches ran before training, to catch bugs early)")

    def on_train_start(self, trainer, pl_module):
        self._say(pl_module, "on_train_start")

    def on_train_epoch_start(self, trainer, pl_module):
        self._say(pl_module, "on_train_epoch_start", f"  epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_batches += 1
        if self.raise_at_step is not None and trainer.global_step >= self.raise_at_step:
            raise RuntimeError(f"simulated failure at optimizer step {trainer.global_step} (--raise_at_step)")

    def on_validation_end(self, trainer, pl_module):
        # Not on_validation_epoch_end: a callback's hook runs before the LightningModule's hook of the
        # same name, so valid_acc (logged in the module's on_validation_epoch_end) is not there yet.
        if not trainer.sanity_checking:
            self._say(pl_module, "on_validation_end", f"  valid_acc {trainer.callback_metrics['valid_acc']:.4f}")

    def on_train_epoch_end(self, trainer, pl_module):
        # In 2.x this runs after the epoch's validation, so it sees the validation metrics too.
        self._say(pl_module, "on_train_epoch_end", f"    epoch {trainer.current_epoch}: {self.train_batches} "
                  f"batches so far, {trainer.global_step} optimizer steps, "
                  f"accumulate_grad_batches={trainer.accumulate_grad_batches}")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._say(pl_module, "on_save_checkpoint", f"  epoch {checkpoint['epoch']}")

    def on_train_end(self, trainer, pl_module):
        self._say(pl_module, "on_train_end")

    def on_fit_end(self, trainer, pl_module):
        self._say(pl_module, "on_fit_end")

    def on_test_start(self, trainer, pl_module):
        self._say(pl_module, "on_test_start")

    def on_test_end(self, trainer, pl_module):
        self._say(pl_module, "on_test_end")

    def teardown(self, trainer, pl_module, stage):
        self._say(pl_module, "teardown", f"(stage={getattr(stage, 'value', stage)!r})")

    def on_exception(self, trainer, pl_module, exception):
        # The 2.x home of on_keyboard_interrupt: any exception in fit/validate/test/predict lands here.
        self._say(pl_module, "on_exception", f"  {type(exception).__name__}: {exception}")


class EMAWithReport(EMAWeightAveraging):
    """EMAWeightAveraging that also measures how far the average ended from the last raw weights."""

    def __init__(self, decay: float):
        super().__init__(decay=decay)
        self.decay = decay
        self.relative_distance = None

    def on_train_end(self, trainer, pl_module):
        raw = parameters_to_vector(pl_module.parameters()).detach().clone()
        super().on_train_end(trainer, pl_module)  # copies the averaged weights into the model
        self.relative_distance = ((parameters_to_vector(pl_module.parameters()) - raw).norm() / raw.norm()).item()


def gradient_norm_recorder() -> LambdaCallback:
    """A LambdaCallback: hooks from plain functions, no subclass. Records the gradient norm per optimizer step."""
    norms = []
    callback = LambdaCallback(on_before_optimizer_step=lambda trainer, pl_module, optimizer: norms.append(
        grad_norm(pl_module, norm_type=2)["grad_2.0_norm_total"].item()))
    callback.grad_norms = norms
    return callback


# --callbacks name: (class, what the demo does with it). lr_finder is off by default: it spends
# extra training steps before the real run.
DEMO_CALLBACKS = {
    "hooks": ("Callback", "HookReporter, a custom Callback: prints each hook as Lightning calls it"),
    "early_stopping": ("EarlyStopping", "stop when valid_acc stalls (--patience) or reaches --stop_at_acc"),
    "lr_monitor": ("LearningRateMonitor", "log the learning rate each epoch as lr-AdamW"),
    "model_summary": ("ModelSummary", "print the layer table at fit start (RichModelSummary when rich is installed)"),
    "timer": ("Timer", "time training, validation and test; stop training at --time_limit"),
    "grad_accum": ("GradientAccumulationScheduler", "1 batch per optimizer step in epoch 0, 2 from epoch 1"),
    "ema": ("EMAWeightAveraging", "validate with, and end on, a moving average of the weights (--ema_decay)"),
    "lambda": ("LambdaCallback", "record the gradient norm before each optimizer step"),
    "checkpoint": ("ModelCheckpoint", "keep checkpoints/best.ckpt, the epoch with the best valid_acc"),
    "lr_finder": ("LearningRateFinder", "try learning rates for 50 steps, then train from the suggested one"),
}
DEFAULT_CALLBACKS = [name for name in DEMO_CALLBACKS if name != "lr_finder"]


def build_callbacks(args, out: Path) -> dict:
    has_rich = importlib.util.find_spec("rich") is not None
    if "model_summary" in args.callbacks and not has_rich:
        print("note: rich is not installed, so ModelSummary prints the plain table (pip install rich for "
              "RichModelSummary)")
    makers = {
        "hooks": lambda: HookReporter(args.raise_at_step),
        "early_stopping": lambda: EarlyStopping(monitor="valid_acc", mode="max", patience=args.patience,
                                                stopping_threshold=args.stop_at_acc),
        "lr_monitor": lambda: LearningRateMonitor(logging_interval="epoch"),
        "model_summary": lambda: (RichModelSummary if has_rich else ModelSummary)(max_depth=2),
        "timer": lambda: Timer(duration={"seconds": args.time_limit} if args.time_limit else None, verbose=True),
        "grad_accum": lambda: GradientAccumulationScheduler(scheduling={0: 1, 1: 2}),
        "ema": lambda: EMAWithReport(decay=args.ema_decay),
        "lambda": gradient_norm_recorder,
        "checkpoint": lambda: ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="valid_acc",
                                              mode="max", enable_version_counter=False),
        "lr_finder": lambda: LearningRateFinder(min_lr=1e-5, max_lr=0.1, num_training_steps=50),
    }
    return {name: makers[name]() for name in args.callbacks}


def what_it_did(name: str, callback, trainer) -> str:
    if name == "hooks":
        return f"printed {callback.calls} hook calls (above); {callback.train_batches} training batches"
    if name == "early_stopping":
        if callback.stopping_reason_message:  # set only when it stopped the run
            return (f"stopped the run after epoch {callback.stopped_epoch} (of epochs 0..{trainer.max_epochs - 1}): "
                    f"{' '.join(callback.stopping_reason_message.split())}")
        return f"did not stop: best valid_acc {callback.best_score:.4f}, {callback.wait_count} epoch(s) without gain"
    if name == "lr_monitor":
        return "logged " + ", ".join(f"{key} = {', '.join(f'{v:.5f}' for v in values)}"
                                     for key, values in callback.lrs.items()) + " (one per epoch)"
    if name == "model_summary":
        return "printed the layer table at fit start (above)"
    if name == "timer":
        limit = "; the time limit stopped training" if callback.time_remaining() == 0 else ""
        return (f"train {callback.time_elapsed('train'):.2f} s, last validation {callback.time_elapsed('validate'):.2f} s, "
                f"test {callback.time_elapsed('test'):.2f} s{limit}")
    if name == "grad_accum":
        factors = {epoch: callback.get_accumulate_grad_batches(epoch) for epoch in range(trainer.current_epoch)}
        return f"batches per optimizer step by epoch {factors}; {trainer.global_step} optimizer steps in all"
    if name == "ema":
        return (f"the model now holds the averaged weights (decay {callback.decay}); they differ from the "
                f"last raw weights by {callback.relative_distance:.2%} (relative L2 distance)")
    if name == "lambda":
        norms = callback.grad_norms
        return (f"recorded the gradient norm at {len(norms)} optimizer steps: first {norms[0]:.3f}, "
                f"last {norms[-1]:.3f}" if norms else "recorded no optimizer step")
    if name == "checkpoint":
        if callback.best_model_score is None:
            return "saved nothing (--fast_dev_run turns checkpointing off)"
        return f"best valid_acc {callback.best_model_score:.4f} saved in {callback.best_model_path}"
    suggestion = callback.optimal_lr.suggestion() if callback.optimal_lr else None
    return (f"suggested lr {suggestion:.2e} after {len(callback.optimal_lr.results['lr'])} trial steps; "
            f"training started from it" if suggestion else "found no suggestion; kept --lr")


# %% Catalogue
def plain(text: str) -> str:
    """Docstring reStructuredText to plain text: :class:`~a.b.C` -> C, `text <url>`_ -> text, ``x`` -> `x`."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda match: match.group(1).split(".")[-1], text)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`_+", r"\1", text)
    return text.replace("``", "`")


def first_paragraph(cls) -> str:
    # Some classes document themselves in __init__; getdoc(cls) would then return the parent's text.
    doc = cls.__dict__.get("__doc__") or cls.__dict__.get("__init__", object).__doc__ or "(no docstring)"
    return " ".join(plain(inspect.cleandoc(doc).split("\n\n")[0]).split())


def one_line(cls, width: int = 100) -> str:
    sentence = first_paragraph(cls).split(". ")[0].rstrip(".") + "."
    return sentence if len(sentence) <= width else sentence[:width - 3] + "..."


def hooks_of(cls) -> list:
    """The Callback hooks that cls (or a parent below Callback) overrides, or takes as arguments (LambdaCallback)."""
    own = set().union(*(vars(klass) for klass in cls.__mro__[:cls.__mro__.index(Callback)]))
    return [hook for hook in HOOKS if hook in own or hook in inspect.signature(cls).parameters]


def signature_of(cls) -> str:
    parameters = [str(p) for p in inspect.signature(cls).parameters.values()]
    text = f"{cls.__name__}(\n" + "".join(f"    {p},\n" for p in parameters) + ")" if parameters else f"{cls.__name__}()"
    # Same bytes on every run: no memory addresses, no "typing." noise.
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text.replace("typing.", ""))


def demo_names() -> dict:
    return {cls_name: name for name, (cls_name, _) in DEMO_CALLBACKS.items()}


def catalogue_table() -> str:
    demo = demo_names()
    rows = [f"{'callback':30s} {'--callbacks':15s} {'hooks':>5s}  summary"]
    for name in pl_callbacks.__all__:
        cls = getattr(pl_callbacks, name)
        rows.append(f"{name:30s} {demo.get(name, '-'):15s} {len(hooks_of(cls)):5d}  {one_line(cls)}")
    return "\n".join(rows)


def callback_page(name: str) -> str:
    cls = getattr(pl_callbacks, name)
    demo = demo_names().get(name)
    lines = [name, "=" * len(name), f"from pytorch_lightning.callbacks import {name}   (defined in {cls.__module__})"]
    if demo:
        lines.append(f"In this demo: --callbacks {demo}: {DEMO_CALLBACKS[demo][1]}")
    lines += ["", "What it does", indented(first_paragraph(cls)), "", "Signature",
              "\n".join("  " + line for line in signature_of(cls).splitlines()), ""]
    if cls is Callback:
        lines += ["Hooks a subclass can override (Lightning 2.x)", indented(", ".join(HOOKS)), "",
                  "Removed 1.x hooks (never called in 2.x) and where their code goes now"]
        lines += [f"  {old:36s} -> {new}" for old, new in REMOVED_HOOKS.items()]
    else:
        hooks = hooks_of(cls)
        lines += ["Hooks it implements", indented(", ".join(hooks) if hooks else "(none of its own)")]
    lines += ["", f"Full documentation: python -c \"help('pytorch_lightning.callbacks.{name}')\""]
    return "\n".join(lines) + "\n"


def indented(text: str) -> str:
    return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="  ")


def write_catalogue(folder: Path) -> Path:
    """AVAILABLE.txt and one <Name>.txt per callback, rewritten from scratch: a rerun gives the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.txt"):
        old.unlink()
    (folder / "AVAILABLE.txt").write_text(
        f"Callbacks in pytorch_lightning {pl.__version__} (pytorch_lightning.callbacks.__all__); "
        f"hooks = how many Callback hooks each implements\n\n{catalogue_table()}\n")
    for name in pl_callbacks.__all__:
        (folder / f"{name}.txt").write_text(callback_page(name))
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
    if args.list or args.info:
        if args.list:
            print(catalogue_table())
        if args.info:
            folder = write_catalogue(out / "callbacks_info")
            print(f"wrote AVAILABLE.txt and {len(pl_callbacks.__all__)} callback files to {folder.resolve()}")
        return 0

    pl.seed_everything(args.seed, workers=True, verbose=False)
    if args.val_size >= prepare_mnist(args.data_dir):
        die(f"--val_size {args.val_size} leaves no training images; use a smaller --val_size")
    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, lr=args.lr,
                            val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
    chosen = build_callbacks(args, out)
    print("callbacks: " + ", ".join(f"{name} ({type(callback).__name__})" for name, callback in chosen.items()))
    csv_logger = CSVLogger(out, name="csv_logs")
    try:
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
            num_nodes=args.num_nodes, precision=args.precision, max_epochs=args.epochs,
            logger=[csv_logger, TensorBoardLogger(out, name="tb_logs")], callbacks=list(chosen.values()),
            # Without these two the Trainer would add a ModelSummary and a ModelCheckpoint of its own.
            enable_model_summary="model_summary" in chosen, enable_checkpointing="checkpoint" in chosen,
            # The progress bar is a callback too; it redraws over printed lines, so the hook printout replaces it.
            enable_progress_bar="hooks" not in chosen,
            fast_dev_run=args.fast_dev_run, limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches, limit_test_batches=args.limit_test_batches,
            default_root_dir=out, deterministic=True)  # LearningRateFinder keeps its temporary checkpoint there
    except (ValueError, RuntimeError) as error:  # e.g. --accelerator gpu on a machine without one
        die(f"cannot build the Trainer: {error}")

    try:
        trainer.fit(model)
    except RuntimeError as error:
        if args.raise_at_step is None:
            raise
        # Lightning ran on_exception on every callback, then re-raised the error to us.
        print(f"\ntraining failed on purpose ({error}); on_exception ran first, see the last [hook] line")
        return 1
    if "ema" in chosen:
        # Test the weights fit left in the model: the average. Restoring a checkpoint on this Trainer
        # would run EMAWeightAveraging.on_load_checkpoint, which puts the raw weights back.
        best, tested = "", "the weights in memory (the EMA average)"
    elif "checkpoint" in chosen and chosen["checkpoint"].best_model_path:
        best = tested = chosen["checkpoint"].best_model_path
    else:
        best, tested = "", "the weights in memory"
    print(f"testing {tested}")
    test_metrics = trainer.test(model, ckpt_path=best or None, verbose=False)[0]

    if trainer.is_global_zero:
        if not args.fast_dev_run:
            history = epoch_history(Path(csv_logger.log_dir, "metrics.csv"))
            print("\n" + history.to_string(float_format="{:.4f}".format))
            history.to_csv(out / "history.csv")
            plot_history(history, out)
        print("\nWhat each callback did:")
        for name, callback in chosen.items():
            print(f"  {type(callback).__name__:29s} {what_it_did(name, callback, trainer)}")
        print(f"\ntest accuracy: {test_metrics['test_acc']:.4f}")
        print(f"\nOutputs in {out.resolve()}:")
        for path in sorted(out.glob("*")):
            print(f"  {path.name}{'/' if path.is_dir() else ''}")

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def epoch_history(metrics_csv: Path) -> pd.DataFrame:
    """One row per epoch from CSVLogger's file, where train, valid and lr values sit on separate rows."""
    metrics = pd.read_csv(metrics_csv)
    # LearningRateMonitor writes its rows straight to the loggers, with a step but no epoch; each one
    # comes just before the rows of the epoch it opens.
    metrics["epoch"] = metrics["epoch"].bfill().astype(int)
    columns = [c for c in ("train_loss", "valid_loss", "train_acc", "valid_acc", "lr-AdamW") if c in metrics]
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
    data.add_argument("--output_dir", "--output-dir", default="outputs/callbacks_lightning",
                      help="where the catalogue, logs, plots and checkpoints go")
    data.add_argument("--val_size", "--val-size", type=int, default=5000, help="training images held out for validation")
    data.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader worker processes")

    train = parser.add_argument_group("training")
    train.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    train.add_argument("--epochs", type=int, default=3, metavar="N")
    train.add_argument("--lr", type=float, default=0.003, help="starting learning rate of the cosine schedule")
    train.add_argument("--seed", type=int, default=42, help="seeds weights, split and shuffling")

    catalogue = parser.add_argument_group("catalogue")
    catalogue.add_argument("--list", action="store_true", help="print every built-in callback as a table and exit")
    catalogue.add_argument("--info", action="store_true", help="write callbacks_info/ (one file per callback) and exit")

    demo = parser.add_argument_group("callbacks in the demo run")
    demo.add_argument("--callbacks", default=",".join(DEFAULT_CALLBACKS), metavar="NAMES",
                      help="comma-separated, run in this order: " + "; ".join(
                          f"{name}: {what}" for name, (_, what) in DEMO_CALLBACKS.items()))
    demo.add_argument("--patience", type=int, default=3, help="EarlyStopping: epochs without a better valid_acc")
    demo.add_argument("--stop_at_acc", "--stop-at-acc", type=float, metavar="ACC",
                      help="EarlyStopping: stop as soon as valid_acc reaches ACC (stopping_threshold)")
    demo.add_argument("--ema_decay", "--ema-decay", type=float, default=0.99,
                      help="EMAWeightAveraging: weight of the old average at each step (0.99: about the last 100 steps)")
    demo.add_argument("--time_limit", "--time-limit", type=int, metavar="SECONDS", help="Timer: stop training after this long")
    demo.add_argument("--raise_at_step", "--raise-at-step", type=int, metavar="N",
                      help="hooks: raise an error at optimizer step N, to show on_exception")

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

    args.callbacks = [name.strip() for name in args.callbacks.split(",") if name.strip()]
    unknown = [name for name in args.callbacks if name not in DEMO_CALLBACKS]
    if unknown:
        die(f"unknown callback name(s) in --callbacks: {', '.join(unknown)}; valid names: {', '.join(DEMO_CALLBACKS)}")
    if not args.callbacks:
        die(f"--callbacks is empty; give one or more of: {', '.join(DEMO_CALLBACKS)}")
    for flag in ("epochs", "batch_size", "val_size", "num_nodes"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        die(f"--lr must be positive, got {args.lr}")
    if args.num_workers < 0 or args.patience < 0:
        die("--num_workers and --patience cannot be negative")
    if not 0 < args.ema_decay < 1:
        die(f"--ema_decay must be between 0 and 1, got {args.ema_decay}")
    if args.stop_at_acc is not None and not 0 < args.stop_at_acc <= 1:
        die(f"--stop_at_acc is an accuracy between 0 and 1, got {args.stop_at_acc}")
    needs = {"stop_at_acc": "early_stopping", "time_limit": "timer", "raise_at_step": "hooks"}
    for flag, name in needs.items():
        if getattr(args, flag) is not None and name not in args.callbacks:
            die(f"--{flag} needs the {name} callback: add {name} to --callbacks")
    for flag in ("time_limit", "raise_at_step"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
