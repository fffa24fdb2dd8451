# %% [markdown]
# # Lightning callbacks: a catalogue and a demo
# Read what every built-in callback does, then train MNIST with a chosen set of them.
#
# ## What it teaches
# Callbacks add behaviour to the Trainer without touching the LightningModule. Without flags: a catalogue of every
# callback Lightning ships (signature, docstring, hooks), offline. --demo trains with the callbacks of --callbacks and
# a custom one that prints each 2.x hook as it runs, then reports what each did. REMOVED_HOOKS: the 1.x hooks gone.
# ## How to run
# ```bash
# python callbacks_lightning.py --list                                          # the catalogue as a table
# python callbacks_lightning.py --demo --data_dir /path/to/datasets             # the demo, 3 epochs
# python callbacks_lightning.py --demo --callbacks hooks,lr_finder,checkpoint   # choose the callbacks
# ```
# ## What it writes (under --output_dir, default outputs/callbacks_lightning)
# ```text
# callbacks_info/                  AVAILABLE.txt and one <Name>.txt per callback (without --demo, or with --info)
# csv_logs/, tb_logs/              with --demo: every logged value, the learning rate (lr-AdamW) included
# checkpoints/best.ckpt            ModelCheckpoint: the epoch with the best valid_acc
# history.csv, loss.png, acc.png   the per-epoch table and its curves
# mnist_classifier.pt              with --save_model: the tested weights of the plain nn.Module
# ```

# %% Parameters tags=["parameters"]
ARGS = []  # a notebook run's flags, as on the command line (e.g. ["--epochs", "1"]); a shell run reads its own

# %% Imports
import argparse
import contextlib
import importlib.util
import errno
import inspect
import io
import logging
import math
import os
import re
import socket
import struct
import sys
import textwrap
import threading
import warnings
from collections import namedtuple
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
import pytorch_lightning.callbacks as pl_callbacks
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import (Callback, EarlyStopping, EMAWeightAveraging, GradientAccumulationScheduler,
                                         LambdaCallback, LearningRateFinder, LearningRateMonitor, ModelCheckpoint,
                                         ModelSummary, RichModelSummary, Timer)
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import grad_norm
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import Accuracy
from torchvision.datasets import MNIST

# Warnings that teach nothing here: the loader-workers hint (the data are in memory; see the README's data-pipeline
# benchmark), a pytree deprecation inside Lightning 2.6, and a full checkpoint folder (a rerun replaces best.ckpt).
for noise in ("does not have many workers", "isinstance\\(treespec, LeafSpec\\)` is deprecated",
              "Checkpoint directory .* exists and is not empty"):
    warnings.filterwarnings("ignore", f".*{noise}.*")
# Notes that teach nothing here: a limit left at its default 1.0 ("all of it"), a cloud-logger tip.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: not any(note in record.getMessage() for note in ("=1.0)` was configured", "Tip: For seamless")))

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MODEL_FILE = "mnist_classifier"


# %% [markdown]
# ## Model
# A plain `nn.Module` with no Lightning in it: two conv blocks, two linear layers; 1x28x28 image in, 10 logits out.

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
# The training recipe around `MNISTConvNet`. It knows nothing about the callbacks around it.

# %% LightningModule
class MNISTClassifier(pl.LightningModule):
    def __init__(self, data_dir: str = "data", batch_size: int = 128, eval_batch_size: int = 128,
                 lr: float = 0.003, val_size: int = 5000, num_workers: int = 0, seed: int = 42):
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
        # Per epoch: GradientAccumulationScheduler changes the steps per epoch later, which would mis-size OneCycle.
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def setup(self, stage: str):
        if stage in ("fit", "validate"):
            self.train_set, self.valid_set = mnist_split(self.hparams.data_dir, self.hparams.val_size, self.hparams.seed)
        if stage == "test":
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
# ## Callbacks
# The 1.x hooks gone in 2.x, a custom `Callback` that prints each 2.x hook as it runs, and the demo's built-in ones.

# %% Callbacks
# 1.x hooks that 2.x never calls (a method of that name raises no error, it is just ignored), and their 2.x home.
REMOVED_HOOKS = {
    "on_init_start": "the callback's __init__ (the Trainer no longer announces its own construction)",
    "on_init_end": "the callback's __init__, or setup(trainer, pl_module, stage)",
    "on_configure_sharded_model": "setup(), or LightningModule.configure_model",
    "on_before_accelerator_backend_setup": "setup(trainer, pl_module, stage)",
    "on_pretrain_routine_start": "on_fit_start", "on_pretrain_routine_end": "on_fit_start",
    "on_epoch_start": "on_train_epoch_start / on_validation_epoch_start / on_test_epoch_start",
    "on_epoch_end": "on_train_epoch_end / on_validation_epoch_end / on_test_epoch_end",
    "on_batch_start": "on_train_batch_start", "on_batch_end": "on_train_batch_end",
    "on_keyboard_interrupt": "on_exception (check isinstance(exception, KeyboardInterrupt))",
}


class HookReporter(Callback):
    """A custom Callback: prints each 2.x hook as Lightning calls it, numbered, so the order shows. Per-batch hooks
    are counted, not printed; --raise_at_step makes training fail on purpose, so that on_exception runs."""

    def __init__(self, raise_at_step=None):
        self.calls, self.train_batches, self.raise_at_step = 0, 0, raise_at_step

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
        self._say(pl_module, "on_sanity_check_end", f"  ({sum(trainer.num_sanity_val_batches)} validation batches ran "
                  "before training, to catch bugs early)")  # num_sanity_val_steps (2), or fewer if the loader is shorter

    def on_train_start(self, trainer, pl_module): self._say(pl_module, "on_train_start")

    def on_train_epoch_start(self, trainer, pl_module):
        self._say(pl_module, "on_train_epoch_start", f"  epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_batches += 1
        if self.raise_at_step is not None and trainer.global_step >= self.raise_at_step:
            raise RuntimeError(f"simulated failure at optimizer step {trainer.global_step} (--raise_at_step)")

    def on_validation_end(self, trainer, pl_module):
        # Not on_validation_epoch_end: a callback's runs before the module's, which is where valid_acc is logged.
        if not trainer.sanity_checking:
            self._say(pl_module, "on_validation_end", f"  valid_acc {trainer.callback_metrics['valid_acc']:.4f}")

    def on_train_epoch_end(self, trainer, pl_module):
        # In 2.x this runs after the epoch's validation, so it sees the validation metrics too.
        self._say(pl_module, "on_train_epoch_end", f"    epoch {trainer.current_epoch}: {self.train_batches} batches so far, "
                  f"{trainer.global_step} optimizer steps, accumulate_grad_batches={trainer.accumulate_grad_batches}")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._say(pl_module, "on_save_checkpoint", f"  epoch {checkpoint['epoch']}")

    def on_train_end(self, trainer, pl_module): self._say(pl_module, "on_train_end")
    def on_fit_end(self, trainer, pl_module): self._say(pl_module, "on_fit_end")
    def on_test_start(self, trainer, pl_module): self._say(pl_module, "on_test_start")
    def on_test_end(self, trainer, pl_module): self._say(pl_module, "on_test_end")

    def teardown(self, trainer, pl_module, stage):
        self._say(pl_module, "teardown", f"(stage={getattr(stage, 'value', stage)!r})")

    def on_exception(self, trainer, pl_module, exception):
        # The 2.x home of on_keyboard_interrupt: any exception in fit/validate/test/predict lands here.
        self._say(pl_module, "on_exception", f"  {type(exception).__name__}: {exception}")


class EMAWithReport(EMAWeightAveraging):
    """EMAWeightAveraging that also measures how far the average ended from the last raw weights."""

    def __init__(self, decay: float):
        super().__init__(decay=decay)
        self.decay, self.relative_distance = decay, None

    def on_train_end(self, trainer, pl_module):
        raw = parameters_to_vector(pl_module.parameters()).detach().clone()
        super().on_train_end(trainer, pl_module)  # copies the averaged weights into the model
        self.relative_distance = ((parameters_to_vector(pl_module.parameters()) - raw).norm() / raw.norm()).item()


def gradient_norm_recorder() -> LambdaCallback:
    """A LambdaCallback: hooks from plain functions, no subclass. Records the gradient norm per optimizer step."""
    callback = LambdaCallback(on_before_optimizer_step=lambda trainer, pl_module, optimizer: callback.grad_norms.append(
        grad_norm(pl_module, norm_type=2)["grad_2.0_norm_total"].item()))
    callback.grad_norms = []
    return callback


def model_summary() -> ModelSummary:
    """The layer table at fit start: drawn by rich when it is installed, plain text otherwise."""
    if importlib.util.find_spec("rich"):
        return RichModelSummary(max_depth=2)
    print("note: rich is not installed, so ModelSummary prints the plain table (pip install rich for RichModelSummary)")
    return ModelSummary(max_depth=2)


DemoCallback = namedtuple("DemoCallback", "shows purpose build report")  # build(args, out), report(callback, trainer)
# Adding a callback to the demo: one entry here, in run order. lr_finder is off by default: it costs extra steps.
DEMO_CALLBACKS = {
    "hooks": DemoCallback(
        "Callback", "HookReporter, a custom Callback: prints each hook as Lightning calls it",
        build=lambda args, out: HookReporter(args.raise_at_step),
        report=lambda hooks, trainer: f"printed {hooks.calls} hook calls (above); {hooks.train_batches} training batches"),
    "early_stopping": DemoCallback(
        "EarlyStopping", "stop when valid_acc stalls (--patience) or reaches --stop_at_acc",
        build=lambda args, out: EarlyStopping(monitor="valid_acc", mode="max", patience=args.patience,
                                              stopping_threshold=args.stop_at_acc),
        report=lambda stopper, trainer: (  # stopping_reason_message is set only when it stopped the run
            f"stopped the run after epoch {stopper.stopped_epoch} (of epochs 0..{trainer.max_epochs - 1}): "
            f"{' '.join(stopper.stopping_reason_message.split())}" if stopper.stopping_reason_message else
            f"did not stop: best valid_acc {stopper.best_score:.4f}, {stopper.wait_count} epoch(s) without gain")),
    "lr_monitor": DemoCallback(
        "LearningRateMonitor", "log the learning rate each epoch as lr-AdamW",
        build=lambda args, out: LearningRateMonitor(logging_interval="epoch"),
        report=lambda monitor, trainer: "logged " + ", ".join(
            f"{key} = {', '.join(f'{v:.5f}' for v in values)}" for key, values in monitor.lrs.items()) + " (one per epoch)"),
    "model_summary": DemoCallback(
        "ModelSummary", "print the layer table at fit start (RichModelSummary when rich is installed)",
        build=lambda args, out: model_summary(), report=lambda *_: "printed the layer table at fit start (above)"),
    "timer": DemoCallback(
        "Timer", "time training, validation and test; stop training at --time_limit",
        build=lambda args, out: Timer(duration={"seconds": args.time_limit} if args.time_limit else None, verbose=True),
        report=lambda timer, trainer: f"train {timer.time_elapsed('train'):.2f} s, last validation "
            f"{timer.time_elapsed('validate'):.2f} s, test {timer.time_elapsed('test'):.2f} s"
            + ("; the time limit stopped training" if timer.time_remaining() == 0 else "")),
    "grad_accum": DemoCallback(
        "GradientAccumulationScheduler", "1 batch per optimizer step in epoch 0, 2 from epoch 1",
        build=lambda args, out: GradientAccumulationScheduler(scheduling={0: 1, 1: 2}),
        report=lambda scheduler, trainer: "batches per optimizer step by epoch "
            f"{ {epoch: scheduler.get_accumulate_grad_batches(epoch) for epoch in range(trainer.current_epoch)} }; "
            f"{trainer.global_step} optimizer steps in all"),
    "ema": DemoCallback(
        "EMAWeightAveraging", "validate with, and end on, a moving average of the weights (--ema_decay)",
        build=lambda args, out: EMAWithReport(decay=args.ema_decay),
        report=lambda ema, trainer: f"the model now holds the averaged weights (decay {ema.decay}); they differ from the "
            f"last raw weights by {ema.relative_distance:.2%} (relative L2 distance)"),
    "lambda": DemoCallback(
        "LambdaCallback", "record the gradient norm before each optimizer step",
        build=lambda args, out: gradient_norm_recorder(),
        report=lambda recorder, trainer: f"recorded the gradient norm at {len(recorder.grad_norms)} optimizer steps: "
            f"first {recorder.grad_norms[0]:.3f}, last {recorder.grad_norms[-1]:.3f}" if recorder.grad_norms
            else "recorded no optimizer step"),
    "checkpoint": DemoCallback(
        "ModelCheckpoint", "keep checkpoints/best.ckpt, the epoch with the best valid_acc",
        build=lambda args, out: ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="valid_acc",
                                                mode="max", enable_version_counter=False),
        report=lambda checkpoint, trainer: f"best valid_acc {checkpoint.best_model_score:.4f} saved in "
            f"{checkpoint.best_model_path}" if checkpoint.best_model_score is not None
            else "saved nothing (--fast_dev_run turns checkpointing off)"),
    "lr_finder": DemoCallback(
        "LearningRateFinder", "try learning rates for 50 steps, then train from the suggested one",
        build=lambda args, out: LearningRateFinder(min_lr=1e-5, max_lr=0.1, num_training_steps=50),
        report=lambda finder, trainer: f"suggested lr {finder.optimal_lr.suggestion():.2e} after "
            f"{len(finder.optimal_lr.results['lr'])} trial steps; training started from it"
            if finder.optimal_lr and finder.optimal_lr.suggestion() else "found no suggestion; kept --lr"),
}
DEFAULT_CALLBACKS = [name for name in DEMO_CALLBACKS if name != "lr_finder"]


# %% [markdown]
# ## Data
# MNIST as normalized tensors, decoded once, and a train/validation split that the seed fixes in every process.

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
# ## Main
# What a shell run and the last cell (with the parameters cell's `ARGS`) run; below it, the plumbing.

# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir)
    before = file_times(out)  # to tell this run's outputs from an earlier run's
    if args.named_modules or args.named_parameters:
        print_structure(MNISTClassifier(), args.named_modules, args.named_parameters)
        return 0
    if args.list or args.info or not args.demo:
        show_callback_catalogue(out, print_table=args.list, write_files=args.info or not args.list, hint=not args.demo)
        if not args.demo:
            return 0
    pl.seed_everything(args.seed, workers=True, verbose=False)
    check_flags_fit_the_data(args, prepare_mnist(args.data_dir))
    check_multi_node(args.num_nodes)
    model = MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                            lr=args.lr, val_size=args.val_size, num_workers=args.num_workers, seed=args.seed)
    chosen = {name: DEMO_CALLBACKS[name].build(args, out) for name in args.callbacks}
    print("callbacks: " + ", ".join(f"{name} ({type(callback).__name__})" for name, callback in chosen.items()))
    with exit_on_error("cannot build the Trainer from these flags"):
        trainer = pl.Trainer(
            accelerator=args.accelerator, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes,
            precision=args.precision, max_epochs=args.epochs, callbacks=list(chosen.values()),
            logger=[CSVLogger(out, name="csv_logs"), TensorBoardLogger(out, name="tb_logs")], plugins=[AtomicCheckpointIO()],
            # Without these two the Trainer would add a ModelSummary and a ModelCheckpoint of its own.
            enable_model_summary="model_summary" in chosen, enable_checkpointing="checkpoint" in chosen,
            enable_progress_bar="hooks" not in chosen,  # it redraws over printed lines: the hook printout replaces it
            fast_dev_run=args.fast_dev_run, limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches, limit_test_batches=args.limit_test_batches,
            default_root_dir=out, deterministic=True)  # LearningRateFinder keeps its temporary checkpoint there
    with exit_if_interrupted(trainer), exit_if_write_fails(out):
        try:
            trainer.fit(model)
        except RuntimeError as error:  # Lightning ran on_exception on every callback, then re-raised the error
            if args.raise_at_step is None:
                raise
            print(f"\ntraining failed on purpose ({error}); on_exception ran first, see the last [hook] line")
            return 1
    # With EMA, test the average in memory: restoring a checkpoint would put the raw weights back (on_load_checkpoint).
    best = chosen["checkpoint"].best_model_path if "checkpoint" in chosen and "ema" not in chosen else ""
    print(f"testing {best or 'the weights in memory' + (' (the EMA average)' if 'ema' in chosen else '')}")
    with exit_if_write_fails(out):
        test_metrics = trainer.test(model, ckpt_path=best or None, verbose=False)[0]

    if trainer.is_global_zero:
        if not args.fast_dev_run:
            history = epoch_history_with_lr(Path(trainer.loggers[0].log_dir, "metrics.csv"))
            print("\n" + history.to_string(float_format="{:.4f}".format))
            write_atomically(out / "history.csv", history.to_csv)
            plot_history(history, out)
        print("\nWhat each callback did:")
        for name, callback in chosen.items():
            print(f"  {type(callback).__name__:29s} {DEMO_CALLBACKS[name].report(callback, trainer)}")
        print(f"\ntest accuracy: {test_metrics['test_acc']:.4f}")
        if args.save_model:
            save_atomically(model.model.state_dict(), out / f"{MODEL_FILE}.pt")
        print_outputs(out, before)

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Read what every built-in callback does, then train MNIST with a chosen set of them.",
                                     formatter_class=DefaultsHelpFormatter)
    parser.error = die  # every bad flag value: one line, exit 2
    catalogue = parser.add_argument_group("without --demo: the catalogue, or the model's structure")
    catalogue.add_argument("--output_dir", "--output-dir", type=output_folder, default="outputs/callbacks_lightning",
                           help="where the catalogue, logs, plots and checkpoints go")
    catalogue.add_argument("--list", action="store_true", help="print the catalogue as a table (writes files only with --info)")
    catalogue.add_argument("--info", action="store_true", help="write callbacks_info/ (the default without --list)")
    catalogue.add_argument("--named_modules", "--named-modules", action="store_true", help="print the modules and exit")
    catalogue.add_argument("--named_parameters", "--named-parameters", action="store_true",
                           help="print every parameter's name and shape and exit")
    demo = parser.add_argument_group("the training demo")
    demo.add_argument("--demo", action="store_true", help="train MNIST with the callbacks of --callbacks")
    demo.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                      help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    demo.add_argument("--val_size", "--val-size", type=number(int, min=1), default=5000, help="training images held out for validation")
    demo.add_argument("--num_workers", "--num-workers", type=number(int, min=0), default=0, help="DataLoader worker processes")
    demo.add_argument("--batch_size", "--batch-size", type=number(int, min=1), default=128, metavar="N", help="training batch size")
    demo.add_argument("--eval_batch_size", "--eval-batch-size", "--test_batch_size", "--test-batch-size",
                      type=number(int, min=1), metavar="N", help="validation and test batch size (default: --batch_size)")
    demo.add_argument("--epochs", type=number(int, min=1), default=3, metavar="N", help="training epochs")
    demo.add_argument("--lr", type=number(float, above=0), default=0.003, help="starting learning rate of the cosine schedule")
    demo.add_argument("--seed", type=number(int, min=0, max=2**32 - 1), default=42, help="seeds weights, split and shuffling")
    demo.add_argument("--save_model", "--save-model", action="store_true", help=f"save {MODEL_FILE}.pt (the tested weights)")
    demo.add_argument("--callbacks", type=callback_names, default=",".join(DEFAULT_CALLBACKS), metavar="NAMES",
                      help="comma-separated, run in this order: " + "; ".join(
                          f"{name}: {callback.purpose}" for name, callback in DEMO_CALLBACKS.items()))
    demo.add_argument("--patience", type=number(int, min=0), default=3, help="EarlyStopping: epochs without a better valid_acc")
    demo.add_argument("--stop_at_acc", "--stop-at-acc", type=number(float, above=0, max=1), metavar="ACC",
                      help="EarlyStopping: stop as soon as valid_acc reaches ACC (stopping_threshold)")
    demo.add_argument("--ema_decay", "--ema-decay", type=number(float, above=0, below=1), default=0.99,
                      help="EMAWeightAveraging: weight of the old average at each step (0.99: about the last 100 steps)")
    demo.add_argument("--time_limit", "--time-limit", type=number(int, min=1), metavar="SECONDS",
                      help="Timer: stop training after this long")
    demo.add_argument("--raise_at_step", "--raise-at-step", type=number(int, min=1), metavar="N",
                      help="hooks: raise an error at optimizer step N, to show on_exception")
    trainer = parser.add_argument_group("the training demo: hardware and debugging (passed to pl.Trainer)")
    trainer.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    trainer.add_argument("--devices", default="auto", help="how many devices, or which: 2, 0,1, auto")
    trainer.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ...")
    trainer.add_argument("--num_nodes", "--num-nodes", type=number(int, min=1), default=1,
                         help="machines for multi-node DDP (each started with MASTER_ADDR, MASTER_PORT, NODE_RANK)")
    trainer.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, 64-true")
    trainer.add_argument("--fast_dev_run", "--fast-dev-run", nargs="?", type=number(int, min=0), const=1, default=0, metavar="N",
                         help="run N batches of each stage (1 when given alone), write no logs")
    for stage in ("train", "val", "test"):
        trainer.add_argument(f"--limit_{stage}_batches", f"--limit-{stage}-batches", type=batch_count, default=1.0,
                             metavar="N|F", help=f"{stage} batches per epoch: a count, or a fraction")
    original = parser.add_argument_group("flags of the original Lightning 1.x tutorial, still accepted")
    original.add_argument("--no-cuda", "--no_cuda", action=OriginalTutorialFlag, nargs=0, dest="accelerator",
                          const="cpu", note="it is --accelerator cpu now")
    original.add_argument("--test", action=OriginalTutorialFlag, nargs=0, note="no effect: the demo (--demo) always ends "
                          "with a test; this script tests no saved weights (Basic_usage_of_lightning.py --load_model does)")
    original.add_argument("--gamma", action=OriginalTutorialFlag, type=float, metavar="GAMMA",
                          note="no effect: the learning rate follows a cosine schedule, not StepLR's decay by gamma")
    original.add_argument("--log-interval", "--log_interval", action=OriginalTutorialFlag, type=number(int, min=1),
                          metavar="N", note="no effect: metrics are logged once per epoch; the hooks printout and the "
                          "progress bar show progress")
    original.add_argument("--load_model", "--load-model", metavar="PATH", type=existing_file,
                          help="refused with a pointer: this script tests no saved weights")
    args = parser.parse_args(argv)
    if args.load_model:
        die(f"--load_model {args.load_model}: this script trains to show callbacks and tests no saved weights; "
            f"test them with: python Basic_usage_of_lightning.py --load_model {args.load_model}")
    if not args.demo:  # the catalogue: a training flag would be silently ignored, so say so
        defaults = parser.parse_args([], argparse.Namespace(output_dir=args.output_dir))
        ignored = [f"--{name}" for name, value in vars(args).items() if value != getattr(defaults, name)
                   and name not in ("list", "info", "named_modules", "named_parameters")]
        if ignored:
            die(f"{', '.join(ignored)}: for the training demo only; add --demo (without it the script writes the catalogue)")
    for flag, name in {"stop_at_acc": "early_stopping", "time_limit": "timer", "raise_at_step": "hooks"}.items():
        if getattr(args, flag) is not None and name not in args.callbacks:
            die(f"--{flag} needs the {name} callback: add {name} to --callbacks")
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    return args


def callback_names(text: str) -> list:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DEMO_CALLBACKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown callback name(s) {', '.join(unknown) or '(none given)'}; "
                                         f"valid names: {', '.join(DEMO_CALLBACKS)}")
    return names


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


# %% Catalogue
# Everything a Callback can override, in the order Callback defines them.
HOOKS = [n for n in vars(Callback) if n.startswith("on_") or n in ("setup", "teardown", "state_dict", "load_state_dict")]


def show_callback_catalogue(out: Path, print_table: bool, write_files: bool, hint: bool) -> None:
    demo = {callback.shows: name for name, callback in DEMO_CALLBACKS.items()}
    rows = [f"{'callback':30s} {'--callbacks':15s} {'hooks':>5s}  summary"]
    for name in pl_callbacks.__all__:
        cls = getattr(pl_callbacks, name)
        summary = first_paragraph(cls).split(". ")[0].rstrip(".") + "."
        rows.append(f"{name:30s} {demo.get(name, '-'):15s} {len(hooks_of(cls)):5d}  "
                    f"{summary if len(summary) <= 100 else summary[:97] + '...'}")
    table = "\n".join(rows)
    if print_table:
        print(table)
    if write_files:
        pages = {f"{name}.txt": callback_page(name, demo.get(name)) for name in pl_callbacks.__all__}
        folder = write_text_files(out / "callbacks_info", {"AVAILABLE.txt": (
            f"Callbacks in pytorch_lightning {pl.__version__} (pytorch_lightning.callbacks.__all__); "
            f"hooks = how many Callback hooks each implements\n\n{table}\n"), **pages})
        print(f"wrote AVAILABLE.txt and {len(pages)} callback files to {folder.resolve()}")
    if hint:
        print("to see them at work in a training run: python callbacks_lightning.py --demo (--help lists its flags)")


def callback_page(name: str, demo: str) -> str:
    cls = getattr(pl_callbacks, name)
    lines = [name, "=" * len(name), f"from pytorch_lightning.callbacks import {name}   (defined in {cls.__module__})",
             *([f"In this demo: --callbacks {demo}: {DEMO_CALLBACKS[demo].purpose}"] if demo else [])]
    lines += ["", "What it does", indented(first_paragraph(cls)), "", "Signature", textwrap.indent(signature_of(cls), "  "), ""]
    if cls is Callback:
        lines += ["Hooks a subclass can override (Lightning 2.x)", indented(", ".join(HOOKS)), "",
                  "Removed 1.x hooks (never called in 2.x) and where their code goes now"]
        lines += [f"  {old:36s} -> {new}" for old, new in REMOVED_HOOKS.items()]
    else:
        lines += ["Hooks it implements", indented(", ".join(hooks_of(cls)) or "(none of its own)")]
    lines += ["", f"Full documentation: python -c \"help('pytorch_lightning.callbacks.{name}')\""]
    return "\n".join(lines) + "\n"


def hooks_of(cls) -> list:
    """The Callback hooks that cls (or a parent below Callback) overrides, or takes as arguments (LambdaCallback)."""
    own = set().union(*(vars(klass) for klass in cls.__mro__[:cls.__mro__.index(Callback)]))
    return [hook for hook in HOOKS if hook in own or hook in inspect.signature(cls).parameters]


def first_paragraph(cls) -> str:
    """The class's own docstring (or its __init__'s), else the nearest parent's, said so; never object's."""
    for owner in cls.__mro__[:-1]:
        doc = owner.__dict__.get("__doc__") or getattr(owner.__dict__.get("__init__"), "__doc__", None)
        if doc:
            summary = " ".join(plain(inspect.cleandoc(doc).split("\n\n")[0]).split())
            return summary if owner is cls else f"(inherited from {owner.__module__}.{owner.__qualname__}) {summary}"
    return "(no docstring)"


def plain(text: str) -> str:
    """Docstring reStructuredText to plain text: :class:`~a.b.C` -> C, `text <url>`_ -> text, ``x`` -> `x`."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda match: match.group(1).split(".")[-1], text)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`_+", r"\1", text)
    return text.replace("``", "`")


def signature_of(cls) -> str:
    parameters = [str(p) for p in inspect.signature(cls).parameters.values()]
    text = f"{cls.__name__}(\n" + "".join(f"    {p},\n" for p in parameters) + ")" if parameters else f"{cls.__name__}()"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text.replace("typing.", ""))  # same bytes every run


def indented(text: str) -> str:
    return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="  ")


def write_text_files(folder: Path, files: dict) -> Path:
    """Write {name: text} into folder, each through a hidden file renamed into place, and drop its other *.txt."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / f".{name}.partial").write_text(text)
            os.replace(folder / f".{name}.partial", folder / name)
        for stale in set(folder.glob("*.txt")) - {folder / name for name in files}:
            stale.unlink()
    except OSError as error:
        for partial in folder.glob(".*.partial"):
            partial.unlink()
        die(f"cannot write {folder}: {write_failure(error) or error} (every file already there is whole)")
    return folder


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
def check_multi_node(num_nodes: int) -> None:
    """Several machines need a rendezvous: check it before the Trainer waits on one."""
    if num_nodes == 1 or "SLURM_NTASKS" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        return  # srun and torchrun set up the rendezvous themselves
    if missing := [name for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if name not in os.environ]:
        die(f"--num_nodes {num_nodes} needs {', '.join(missing)} in the environment of every machine "
            f"(or run under torchrun or srun); see the README's 'Past one machine'")
    address, port, rank = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], os.environ["NODE_RANK"]
    if not (port.isdigit() and 0 < int(port) < 65536):
        die(f"MASTER_PORT={port} is not a port number (1 to 65535); set the same free port on every machine")
    if not (rank.isdigit() and int(rank) < num_nodes):
        die(f"NODE_RANK={rank}, but --num_nodes {num_nodes} numbers the machines 0 to {num_nodes - 1} "
            f"(0 on the one at MASTER_ADDR)")
    try:  # a name that does not resolve would make every machine wait for the rendezvous forever
        socket.getaddrinfo(address, int(port))
    except OSError as error:
        die(f"MASTER_ADDR={address} does not resolve ({error.strerror}); set it to the IP address or host "
            f"name of the machine with NODE_RANK=0")
    if rank == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
        with socket.socket() as probe:
            try:  # node 0 hosts the rendezvous: its port must be free
                probe.bind((address, int(port)))
            except OSError as error:
                die(f"cannot host the rendezvous at {address}:{port} ({error.strerror or error}); pick another "
                    f"MASTER_PORT on every machine")


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


def epoch_history_with_lr(metrics_csv: Path) -> pd.DataFrame:
    """One row per epoch from CSVLogger's file, where train, valid and lr values sit on separate rows."""
    metrics = pd.read_csv(metrics_csv)
    metrics["epoch"] = metrics["epoch"].bfill().astype(int)  # lr rows have no epoch: they precede the epoch they open
    columns = [c for c in ("train_loss", "valid_loss", "train_acc", "valid_acc", "lr-AdamW") if c in metrics]
    return metrics.groupby("epoch")[columns].last().dropna(how="all")


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
