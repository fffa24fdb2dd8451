"""
Title: Step overhead: where Lightning's time per training step goes
Description: Per-step cost of the Trainer loop, torchmetrics and self.log, on a tiny model.

What it measures
    A framework's cost is paid per step, whatever the model; on the scripts' CNN it hides in the
    noise of a 30 ms step, so this benchmark makes it visible with a model that costs almost nothing
    (one linear layer on MNIST-shaped random tensors). It adds one piece at a time:
      PyTorch loop                        zero_grad, forward, loss, backward, step
      PyTorch loop + metrics              the same plus train_loss.update() and train_acc.update()
                                          (torchmetrics MeanMetric and Accuracy)
      Lightning loop                      the same training_step under a bare Trainer, no metric, no log
      + metrics, logged once per epoch    plus the two updates in training_step and two self.log calls
                                          in on_train_epoch_end: Basic_usage_of_lightning.py's step
      + loggers, checkpoint, progress bar the Trainer the script builds around it: the script
      self.log in every step instead      the common habit it replaces: train_acc(logits, labels) and
                                          self.log(..., on_step=False, on_epoch=True) for the loss and
                                          the accuracy in every training_step, same Trainer
    Every configuration trains the same number of steps in the same process; the configurations
    take turns (A B C ... A B C ...) for --repeats rounds and each row is the median, so a burst of
    load elsewhere hits all of them alike. The tiny model runs on one thread (--threads): the
    framework's work is single-threaded Python, and a layer this small split over busy cores only
    waits for the other thread. The "ms/step added" column is each row minus the one
    above it. The last column puts the Lightning rows against the real network: the extra ms per
    step as a share of one training step of the scripts' CNN, timed here with the same threads.

How to run
    python benchmarks/step_overhead.py                      # full: 5 rounds of 300 steps, ~1 min
    python benchmarks/step_overhead.py --quick              # 2 rounds of 30 steps, ~15 s
    python benchmarks/step_overhead.py --accelerator gpu    # the same on a GPU, against its CNN step

What it writes (under --output_dir, default outputs/benchmarks)
    step_overhead.csv   one row per configuration
    step_overhead.md    the Markdown table as printed, with the machine it ran on
"""

# %% Imports
import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Accuracy, MeanMetric

from common import (MNISTConvNet, benchmark_parser, device_name, die, environment_line, fill_mode_defaults,
                    lightning_accelerator, markdown_table, synchronized_time, torch_device, write_report)

# The data are tensors in memory: Lightning's hint to add loader workers does not apply.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 calls a pytree check that torch 2.14 deprecates; nothing a user can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# A --quick run trains fewer steps than log_every_n_steps; the epoch-level values are logged anyway.
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
# Dozens of short fits: their "GPU available" lines and model summaries would bury the table.
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
FULL = dict(repeats=5, steps=300)
QUICK = dict(repeats=2, steps=30)
BATCH_SIZE = 128
# name: (framework, training metrics: none | logged per "epoch" | self.log every "step",
#        the script's loggers/checkpoint/progress bar)
CONFIGS = {
    "PyTorch loop": ("pytorch", "none", False),
    "PyTorch loop + metrics": ("pytorch", "epoch", False),
    "Lightning loop": ("lightning", "none", False),
    "+ metrics, logged once per epoch": ("lightning", "epoch", False),
    "+ loggers, checkpoint, progress bar = the script": ("lightning", "epoch", True),
    "self.log in every step instead": ("lightning", "step", True),
}


# %% Model
class TinyNet(nn.Module):
    """One linear layer: its arithmetic is so small that what is left is the framework's."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


# %% LightningModule
class StepUnderTest(pl.LightningModule):
    """The training_step of Basic_usage_of_lightning.py, with its metrics switchable."""

    def __init__(self, metrics: str):
        super().__init__()
        self.metrics = metrics
        self.model = TinyNet()
        self.train_loss = MeanMetric()
        self.train_acc = Accuracy(task="multiclass", num_classes=10)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        if self.metrics == "epoch":  # the script: accumulate only
            self.train_loss.update(loss.detach(), weight=len(labels))
            self.train_acc.update(logits, labels)
        elif self.metrics == "step":  # the habit: a metric call and two self.log calls every step
            self.train_acc(logits, labels)
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
            self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_end(self):
        if self.metrics == "epoch":
            self.log("train_loss", self.train_loss, prog_bar=True)
            self.log("train_acc", self.train_acc)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


# %% Measurement
def random_batches(steps: int) -> DataLoader:
    """MNIST-shaped random tensors: the values do not matter to the time, and no download is needed."""
    images = torch.randn(steps * BATCH_SIZE, 1, 28, 28)
    labels = torch.randint(0, 10, (steps * BATCH_SIZE,))
    return DataLoader(TensorDataset(images, labels), batch_size=BATCH_SIZE, shuffle=True)


def pytorch_ms_per_step(loader, device, metrics: str, model: nn.Module = None) -> float:
    model = (model or TinyNet()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_loss = MeanMetric().to(device)
    train_acc = Accuracy(task="multiclass", num_classes=10).to(device)
    started = synchronized_time(device)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        if metrics != "none":
            train_loss.update(loss.detach(), weight=len(labels))
            train_acc.update(logits, labels)
    return (synchronized_time(device) - started) * 1000 / len(loader)


def lightning_ms_per_step(loader, device, metrics: str, as_the_script: bool) -> float:
    clock = EpochClock(device)
    with tempfile.TemporaryDirectory() as out:
        if as_the_script:  # the script's Trainer; no validation here, so the checkpoint keeps the last epoch
            extras = dict(logger=[CSVLogger(out, name="csv_logs"), TensorBoardLogger(out, name="tb_logs")],
                          callbacks=[ModelCheckpoint(dirpath=Path(out, "checkpoints")), clock])
        else:
            extras = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[clock])
        trainer = pl.Trainer(accelerator=lightning_accelerator(device), devices=1, max_epochs=1,
                             deterministic=True, **extras)
        # The progress bar still draws every step, into a file nobody reads instead of the console.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            trainer.fit(StepUnderTest(metrics), loader)
    return clock.seconds * 1000 / len(loader)


class EpochClock(pl.Callback):
    """Times the training epoch from its first hook to its last."""

    def __init__(self, device):
        self.device, self.seconds = device, None

    def on_train_epoch_start(self, trainer, pl_module):
        self.started = synchronized_time(self.device)

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = synchronized_time(self.device) - self.started


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch_device(args.accelerator)
    user_threads = torch.get_num_threads()  # what a script gets: the CNN step is timed with these
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0, verbose=False)
    loader = random_batches(args.steps)
    print(f"step overhead: {len(CONFIGS)} configurations x {args.repeats} rounds x {args.steps} steps of batch "
          f"{BATCH_SIZE}, on {device_name(device)}, torch threads {args.threads} (CNN step: {user_threads})")

    started = time.perf_counter()
    # A warm-up of each kind first (lazy initialisation, first-call caches), not recorded.
    pytorch_ms_per_step(loader, device, metrics="epoch")
    lightning_ms_per_step(loader, device, metrics="epoch", as_the_script=False)
    # The real network's step, for scale: the threads a script gets, the same device and batch size.
    cnn_loader = random_batches(min(args.steps, 30))
    pytorch_ms_per_step(cnn_loader, device, metrics="none", model=MNISTConvNet())
    times, cnn_times = {name: [] for name in CONFIGS}, []
    for round_number in range(1, args.repeats + 1):
        torch.set_num_threads(args.threads)
        for name, (framework, metrics, as_the_script) in CONFIGS.items():
            if framework == "pytorch":
                times[name].append(pytorch_ms_per_step(loader, device, metrics))
            else:
                times[name].append(lightning_ms_per_step(loader, device, metrics, as_the_script))
        torch.set_num_threads(user_threads)
        cnn_times.append(pytorch_ms_per_step(cnn_loader, device, metrics="none", model=MNISTConvNet()))
        print(f"  round {round_number}: " + "  ".join(f"{t[-1]:.2f}" for t in times.values())
              + f"  (CNN step {cnn_times[-1]:.1f})")
    cnn_ms = statistics.median(cnn_times)

    rows, previous = [], None
    for name, (framework, metrics, _) in CONFIGS.items():
        ms = statistics.median(times[name])
        # Against the PyTorch loop that does the same work: with the metrics or without them.
        same_work = statistics.median(times["PyTorch loop" if metrics == "none" else "PyTorch loop + metrics"])
        over = ms - same_work if framework == "lightning" else None
        rows.append({"configuration": name, "ms/step": round(ms, 3),
                     "min-max": f"{min(times[name]):.2f}-{max(times[name]):.2f}",
                     "ms/step added": "" if previous is None else round(ms - previous, 3),
                     "Lightning ms/step": "" if over is None else round(over, 3),
                     "as % of a CNN step": "" if over is None else f"{100 * over / cnn_ms:.1f}%"})
        previous = ms

    table = markdown_table(rows)
    notes = (f"Medians of {args.repeats} rounds of {args.steps} steps with {args.threads} torch thread(s). "
             f"\"Lightning ms/step\": the row minus the PyTorch loop that does the same work (with or without "
             f"the metrics). One training step of the scripts' CNN (batch {BATCH_SIZE}, plain PyTorch, "
             f"{user_threads} threads, median of the rounds) takes {cnn_ms:.1f} ms here.\n"
             + environment_line(device))
    write_report(out, "step_overhead", "Step overhead", table, notes, rows, argv, started)
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, QUICK, FULL, data_dir=False)
    parser.add_argument("--repeats", type=int, metavar="N", help="rounds over all configurations (default: by mode)")
    parser.add_argument("--steps", type=int, metavar="N", help="training steps per measurement (default: by mode)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch threads for the tiny model (the CNN step uses torch's default)")
    args = parser.parse_args(argv)

    fill_mode_defaults(args, QUICK, FULL)
    for flag in ("repeats", "steps"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.threads < 1:
        die(f"--threads must be at least 1, got {args.threads}")
    return args


if __name__ == "__main__":
    sys.exit(main())
