"""
Title: Step overhead: where Lightning's time per training step goes
Description: Per-step cost of the Trainer loop, a torchmetrics call and each self.log, on a tiny model.

What it measures
    A framework's cost is paid per step, whatever the model; on the scripts' CNN it hides in the
    noise of a 30 ms step, so this benchmark makes it visible with a model that costs almost nothing
    (one linear layer on MNIST-shaped random tensors). It adds one piece at a time:
      PyTorch loop                        zero_grad, forward, loss, backward, step
      PyTorch loop + metric               the same plus train_acc(logits, labels) (torchmetrics)
      Lightning loop                      the same training_step under a bare Trainer, no metric, no log
      + metric                            plus train_acc(logits, labels)
      + self.log(loss)                    plus self.log("train_loss", ..., on_epoch=True, sync_dist=True)
      + self.log(metric)                  plus self.log("train_acc", self.train_acc, on_epoch=True):
                                          now the training_step of Basic_usage_of_lightning.py
      + loggers, checkpoint, progress bar the Trainer the script builds around it
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
import csv
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Accuracy

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
# name: (framework, torchmetrics call, self.log calls, the script's loggers/checkpoint/progress bar)
CONFIGS = {
    "PyTorch loop": ("pytorch", False, 0, False),
    "PyTorch loop + metric": ("pytorch", True, 0, False),
    "Lightning loop": ("lightning", False, 0, False),
    "+ metric": ("lightning", True, 0, False),
    "+ self.log(loss)": ("lightning", True, 1, False),
    "+ self.log(metric) = the script's step": ("lightning", True, 2, False),
    "+ loggers, checkpoint, progress bar": ("lightning", True, 2, True),
}


# %% Model
class TinyNet(nn.Module):
    """One linear layer: its arithmetic is so small that what is left is the framework's."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class MNISTConvNet(nn.Module):
    """A copy of MNISTConvNet in Basic_usage_of_lightning.py: the step the overhead is compared with."""

    def __init__(self, hidden_units: int = 128, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, hidden_units), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_units, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# %% LightningModule
class StepUnderTest(pl.LightningModule):
    """The training_step of Basic_usage_of_lightning.py, with its metric and log calls switchable."""

    def __init__(self, metric: bool, log_calls: int):
        super().__init__()
        self.metric, self.log_calls = metric, log_calls
        self.model = TinyNet()
        self.train_acc = Accuracy(task="multiclass", num_classes=10)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        if self.metric:
            self.train_acc(logits, labels)
        if self.log_calls >= 1:
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        if self.log_calls >= 2:
            self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


# %% Measurement
def random_batches(steps: int) -> DataLoader:
    """MNIST-shaped random tensors: the values do not matter to the time, and no download is needed."""
    images = torch.randn(steps * BATCH_SIZE, 1, 28, 28)
    labels = torch.randint(0, 10, (steps * BATCH_SIZE,))
    return DataLoader(TensorDataset(images, labels), batch_size=BATCH_SIZE, shuffle=True)


def pytorch_ms_per_step(loader, device, metric: bool, model: nn.Module = None) -> float:
    model = (model or TinyNet()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_acc = Accuracy(task="multiclass", num_classes=10).to(device)
    started = synchronized_time(device)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        logits = model(images)
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
        if metric:
            train_acc(logits, labels)
    return (synchronized_time(device) - started) * 1000 / len(loader)


def lightning_ms_per_step(loader, device, metric: bool, log_calls: int, as_the_script: bool) -> float:
    clock = EpochClock(device)
    with tempfile.TemporaryDirectory() as out:
        if as_the_script:  # the script's Trainer; no validation here, so the checkpoint keeps the last epoch
            extras = dict(logger=[CSVLogger(out, name="csv_logs"), TensorBoardLogger(out, name="tb_logs")],
                          callbacks=[ModelCheckpoint(dirpath=Path(out, "checkpoints")), clock])
        else:
            extras = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[clock])
        trainer = pl.Trainer(accelerator={"cuda": "gpu"}.get(device.type, device.type), devices=1, max_epochs=1,
                             deterministic=True, **extras)
        # The progress bar still draws every step, into a file nobody reads instead of the console.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            trainer.fit(StepUnderTest(metric, log_calls), loader)
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
    pytorch_ms_per_step(loader, device, metric=True)
    lightning_ms_per_step(loader, device, metric=True, log_calls=2, as_the_script=False)
    # The real network's step, for scale: the threads a script gets, the same device and batch size.
    cnn_loader = random_batches(min(args.steps, 30))
    pytorch_ms_per_step(cnn_loader, device, metric=False, model=MNISTConvNet())
    times, cnn_times = {name: [] for name in CONFIGS}, []
    for round_number in range(1, args.repeats + 1):
        torch.set_num_threads(args.threads)
        for name, (framework, metric, log_calls, as_the_script) in CONFIGS.items():
            if framework == "pytorch":
                times[name].append(pytorch_ms_per_step(loader, device, metric))
            else:
                times[name].append(lightning_ms_per_step(loader, device, metric, log_calls, as_the_script))
        torch.set_num_threads(user_threads)
        cnn_times.append(pytorch_ms_per_step(cnn_loader, device, metric=False, model=MNISTConvNet()))
        print(f"  round {round_number}: " + "  ".join(f"{t[-1]:.2f}" for t in times.values())
              + f"  (CNN step {cnn_times[-1]:.1f})")
    cnn_ms = statistics.median(cnn_times)

    rows, previous = [], None
    for name, (framework, metric, *_) in CONFIGS.items():
        ms = statistics.median(times[name])
        # Against the PyTorch loop that does the same work: with the metric call or without it.
        same_work = statistics.median(times["PyTorch loop + metric" if metric else "PyTorch loop"])
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
             f"the metric call). One training step of the scripts' CNN (batch {BATCH_SIZE}, plain PyTorch, "
             f"{user_threads} threads, median of the rounds) takes {cnn_ms:.1f} ms here.\n"
             + environment_line(device))
    command = "python benchmarks/step_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("\n" + table + "\n\n" + notes)
    write_csv(out / "step_overhead.csv", rows)
    (out / "step_overhead.md").write_text(
        f"### Step overhead\n\n{table}\n\n{notes}\nCommand: `{command.strip()}`; "
        f"benchmark wall {time.perf_counter() - started:.0f} s.\n")
    print(f"\nwrote {out / 'step_overhead.csv'} and {out / 'step_overhead.md'} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


def markdown_table(rows: list) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: list) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def environment_line(device: torch.device) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return (f"Machine: {cpu}, {os.cpu_count()} logical cores, device {device_name(device)}, "
            f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}. "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"pytorch-lightning {version('pytorch-lightning')}, torchmetrics {version('torchmetrics')}.")


def torch_device(accelerator: str) -> torch.device:
    """The device --accelerator names, resolved the way the Trainer resolves it."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            die(f"--accelerator {accelerator}: torch sees no CUDA GPU here; use --accelerator cpu")
        return torch.device("cuda")
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        if not torch.backends.mps.is_available():
            die("--accelerator mps: MPS is not available here; use --accelerator cpu")
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def synchronized_time(device: torch.device) -> float:
    """perf_counter once the device has finished its queued work (GPU kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def die(message: str) -> None:
    """One line on stderr and exit code 2: bad input is the user's to fix, not a crash."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[1],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", "--output-dir", default="outputs/benchmarks", help="where the CSV and table go")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run that proves the benchmark works: {QUICK}; full mode is {FULL}")
    parser.add_argument("--repeats", type=int, metavar="N", help="rounds over all configurations (default: by mode)")
    parser.add_argument("--steps", type=int, metavar="N", help="training steps per measurement (default: by mode)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch threads for the tiny model (the CNN step uses torch's default)")
    args = parser.parse_args(argv)

    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for flag in ("repeats", "steps"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.threads < 1:
        die(f"--threads must be at least 1, got {args.threads}")
    return args


if __name__ == "__main__":
    sys.exit(main())
