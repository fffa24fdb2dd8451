"""
Title: Time to 99%: the Basic script versus the same recipe in plain PyTorch
Description: Wall time from launch to 99% MNIST test accuracy, with Lightning and with a plain loop.

What it measures
    lightning   Basic_usage_of_lightning.py itself, run as a user runs it (its defaults: AdamW +
                one-cycle at lr 0.01, batch 128, 55000/5000 split, CSV + TensorBoard logs, best
                checkpoint on valid_acc, then test, predict, history and plots)
    pytorch     the same recipe as the shortest plain loop that does the job, in this file: same
                network, seed, split, batches, optimizer and schedule, validation every epoch, the
                best weights (by valid_acc) saved and tested; no training metrics, loggers, plots
                or predict pass (parity.py is where both sides do the same work)
    Each run is a fresh process, timed from launch to exit, so the numbers include what a user
    waits for: interpreter start, imports, reading MNIST, training, testing. The one-cycle
    schedule spans the whole run, so "2 epochs" is its own run, not the first 2 epochs of a
    3-epoch run; the time to 99% is the fastest run whose test accuracy reached --target. With
    --repeats N each run is made N times (the frameworks taking turns to go first) and the table
    shows the median: one run can be slowed by anything else on the machine.
    Both sides train on the same batches from the same weights, so their test accuracies should
    agree; the table shows both, and the difference in time is what Lightning and the script's
    extras cost together.

How to run
    python benchmarks/time_to_99.py --data_dir ../shared/data           # full: 2 and 3 epochs, ~3.5 min
    python benchmarks/time_to_99.py --data_dir ../shared/data --quick   # 1 short epoch, ~25 s
    python benchmarks/time_to_99.py --epochs 1,2,3 --repeats 3 --accelerator gpu

What it writes (under --output_dir, default outputs/benchmarks)
    time_to_99.csv     one row per run
    time_to_99.md      the Markdown table as printed, with the machine it ran on
    time_to_99_runs/   each run's console output (*.log) and what the Basic script writes
"""

# %% Imports
import argparse
import contextlib
import csv
import io
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import Accuracy
from torchvision.datasets import MNIST

ROOT = Path(__file__).resolve().parent.parent
BASIC_SCRIPT = ROOT / "Basic_usage_of_lightning.py"
FRAMEWORKS = ("pytorch", "lightning")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FULL = dict(epochs="2,3", limit_train_batches=1.0)
QUICK = dict(epochs="1", limit_train_batches=100)


# %% Model
class MNISTConvNet(nn.Module):
    """A copy of MNISTConvNet in Basic_usage_of_lightning.py: same layers, so the same weights."""

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


# %% PyTorch loop
def train(model, device, loader, optimizer, scheduler, max_batches):
    model.train()
    for batch_idx, (images, labels) in enumerate(loader):
        if batch_idx == max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        scheduler.step()


def evaluate(model, device, loader) -> float:
    model.eval()
    accuracy = Accuracy(task="multiclass", num_classes=10).to(device)
    with torch.no_grad():
        for images, labels in loader:
            accuracy.update(model(images.to(device)), labels.to(device))
    return accuracy.compute().item()


def run_pytorch(args) -> int:
    """Child process: the Basic script's recipe as a plain loop; prints 'test accuracy: 0.9914'."""
    device = torch_device(args.accelerator)
    epochs = args.epochs[0]  # the parent starts one child per value of --epochs
    # What Trainer(deterministic=True) in the script switches on, so both sides run the same kernels.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    model = MNISTConvNet().to(device)
    full = mnist_tensors(args.data_dir, train=True)
    generator = torch.Generator().manual_seed(args.seed)
    train_set, valid_set = random_split(full, [len(full) - args.val_size, args.val_size], generator=generator)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    valid_loader = DataLoader(valid_set, batch_size=args.batch_size)
    test_loader = DataLoader(mnist_tensors(args.data_dir, train=False), batch_size=args.batch_size)
    train_batches = batch_count(len(train_loader), args.limit_train_batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                    total_steps=epochs * train_batches)
    best_path, best_accuracy = Path(args.run_dir, "best.pt"), -1.0
    for epoch in range(1, epochs + 1):
        train(model, device, train_loader, optimizer, scheduler, train_batches)
        valid_accuracy = evaluate(model, device, valid_loader)
        print(f"epoch {epoch}: valid_acc {valid_accuracy:.4f}")
        if valid_accuracy > best_accuracy:  # what ModelCheckpoint(monitor="valid_acc") does
            best_accuracy = valid_accuracy
            torch.save(model.state_dict(), best_path)
    model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    print(f"test accuracy: {evaluate(model, device, test_loader):.4f}")
    return 0


# %% Data
def prepare_mnist(data_dir: str) -> None:
    """Download MNIST into data_dir/MNIST/raw unless it is there; exit with a fix-it line if not."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints every mirror it tries
            MNIST(data_dir, train=True, download=True)
            MNIST(data_dir, train=False, download=True)
    except (RuntimeError, OSError) as error:
        reason = " ".join(str(error).split())  # torchvision's message spans lines; the error is one line
        die(f"MNIST is not in {Path(data_dir, 'MNIST', 'raw')} and could not be downloaded ({reason}). "
            f"Copy the four raw files there, or point --data_dir or PATH_DATASETS at a folder that "
            f"holds MNIST/raw.")


def check_val_size(data_dir: str, val_size: int) -> None:
    """Fail before any run starts when the validation split would leave no training images."""
    train_images = len(MNIST(data_dir, train=True, download=False))
    if val_size >= train_images:
        die(f"--val_size {val_size} leaves no training images: {data_dir} holds {train_images}; "
            f"pass a smaller --val_size")


def mnist_tensors(data_dir: str, train: bool) -> TensorDataset:
    """The whole split as normalized tensors, decoded once (as the script does)."""
    dataset = MNIST(data_dir, train=train, download=False)
    images = dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD).unsqueeze(1)
    return TensorDataset(images, dataset.targets)


def batch_count(available: int, limit) -> int:
    """How many batches a limit_train_batches value means, as the Trainer counts them."""
    return min(available, limit) if isinstance(limit, int) else int(available * limit)


# %% Measurement
def launch(args, framework: str, epochs: int, repeat: int, out: Path) -> tuple:
    """One run in a fresh process, timed from launch to exit: (seconds, test accuracy)."""
    run_dir = out / "time_to_99_runs" / f"{framework}_{epochs}_epochs"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    recipe = ["--data_dir", args.data_dir, "--epochs", str(epochs), "--batch_size", str(args.batch_size),
              "--lr", str(args.lr), "--seed", str(args.seed), "--val_size", str(args.val_size),
              "--limit_train_batches", str(args.limit_train_batches), "--accelerator", args.accelerator]
    if framework == "lightning":
        # --devices 1: one device, like the plain loop (on a multi-GPU machine "auto" means DDP).
        command = [sys.executable, str(BASIC_SCRIPT), *recipe, "--devices", "1", "--output_dir", str(run_dir)]
    else:
        command = [sys.executable, __file__, "--run", "pytorch", *recipe, "--run_dir", str(run_dir)]
    log = out / "time_to_99_runs" / f"{framework}_{epochs}_epochs_run{repeat}.log"
    started = time.perf_counter()
    with open(log, "w") as console:
        finished = subprocess.run(command, stdout=console, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    text = log.read_text()
    match = re.search(r"test accuracy:\s*([0-9.]+)", text)
    if finished.returncode != 0 or not match:
        print("\n".join(text.splitlines()[-15:]), file=sys.stderr)
        die(f"the {framework} run ({epochs} epochs) failed (exit {finished.returncode}, no test accuracy "
            f"printed); its output is in {log} (last lines above)")
    return wall, float(match.group(1))


def time_to_target(rows: list, target: float) -> list:
    """Per framework, the fastest run that reached the target."""
    summary = []
    for framework in dict.fromkeys(row["framework"] for row in rows):
        reached = [row for row in rows if row["framework"] == framework and row["test accuracy"] >= target]
        best = min(reached, key=lambda row: row["wall s"]) if reached else None
        summary.append({"framework": framework,
                        f"time to {target:.1%} s": best["wall s"] if best else "not reached",
                        "epochs": best["epochs"] if best else "-",
                        "test accuracy": best["test accuracy"] if best else "-"})
    times = {row["framework"]: row[f"time to {target:.1%} s"] for row in summary}
    if all(isinstance(times.get(f), float) for f in FRAMEWORKS):
        for row in summary:
            row["x PyTorch"] = round(times[row["framework"]] / times["pytorch"], 2)
    return summary


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run:
        return run_pytorch(args)
    prepare_mnist(args.data_dir)
    check_val_size(args.data_dir, args.val_size)
    device = torch_device(args.accelerator)
    out = Path(args.output_dir)
    (out / "time_to_99_runs").mkdir(parents=True, exist_ok=True)
    print(f"time to {args.target:.1%}: {', '.join(args.frameworks)} x epochs {args.epochs}, "
          f"train batches {args.limit_train_batches}, on {device_name(device)}")

    started = time.perf_counter()
    runs = {(framework, epochs): [] for epochs in args.epochs for framework in args.frameworks}
    for repeat in range(1, args.repeats + 1):
        for epochs in args.epochs:
            # Alternate which framework goes first, so neither always inherits a warm (or busy) machine.
            for framework in (args.frameworks if repeat % 2 else args.frameworks[::-1]):
                wall, accuracy = launch(args, framework, epochs, repeat, out)
                runs[framework, epochs].append((wall, accuracy))
                print(f"  run {repeat}: {framework:10s} {epochs} epochs: {wall:.1f} s, test accuracy {accuracy:.4f}")
    rows = []
    for (framework, epochs), results in runs.items():
        walls, accuracies = zip(*results)
        accuracy = statistics.median(accuracies)  # the same every run: the training is deterministic
        rows.append({"framework": framework, "epochs": epochs, "wall s": round(statistics.median(walls), 1),
                     "min-max": f"{min(walls):.1f}-{max(walls):.1f}", "test accuracy": accuracy,
                     f"reached {args.target:.1%}": "yes" if accuracy >= args.target else "no"})
    summary = time_to_target(rows, args.target)

    tables = markdown_table(summary) + "\n\n" + markdown_table(rows)
    notes = (f"Wall time from launch to exit, median of {args.repeats} run(s) each.\n" + environment_line(device))
    command = "python benchmarks/time_to_99.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("\n" + tables + "\n\n" + notes)
    write_csv(out / "time_to_99.csv", rows)
    (out / "time_to_99.md").write_text(
        f"### Time to {args.target:.1%} test accuracy\n\n{tables}\n\n{notes}\nCommand: `{command.strip()}`; "
        f"benchmark wall {time.perf_counter() - started:.0f} s.\n")
    print(f"\nwrote {out / 'time_to_99.csv'} and {out / 'time_to_99.md'} "
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


def die(message: str) -> None:
    """One line on stderr and exit code 2: bad input is the user's to fix, not a crash."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# %% Flags
def number(text: str):
    """An int (a count of batches) or a float (a fraction of them), as the Trainer accepts."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[1],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                        help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    parser.add_argument("--output_dir", "--output-dir", default="outputs/benchmarks", help="where the CSV and table go")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run that proves the benchmark works: {QUICK}; full mode is {FULL}")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="which sides to run, comma-separated")
    parser.add_argument("--epochs", metavar="N[,N...]", help="one run per value, each its own schedule (default: by mode)")
    parser.add_argument("--limit_train_batches", "--limit-train-batches", type=number, metavar="N|F",
                        help="training batches per epoch: a count or a fraction (default: by mode)")
    parser.add_argument("--repeats", type=int, default=1, metavar="N", help="runs of each, for a median")
    parser.add_argument("--target", type=float, default=0.99, help="the test accuracy to reach")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--seed", type=int, default=42, help="seeds weights, split and shuffling")
    parser.add_argument("--val_size", "--val-size", type=int, default=5000, help="training images held out")
    # Set by the parent for the plain-loop child process; a user never needs them.
    parser.add_argument("--run", choices=["pytorch"], help=argparse.SUPPRESS)
    parser.add_argument("--run_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.epochs = [int(e) for e in args.epochs.split(",") if e.strip()]
    except ValueError:
        die(f"--epochs takes whole numbers separated by commas, such as 2,3; got {args.epochs}")
    if not args.epochs or min(args.epochs) < 1:
        die(f"--epochs: every value must be at least 1, got {args.epochs}")
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in args.frameworks if f not in FRAMEWORKS]
    if unknown or not args.frameworks:
        die(f"--frameworks: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FRAMEWORKS)}")
    if not 0 < args.target <= 1:
        die(f"--target is an accuracy between 0 and 1, got {args.target}")
    if args.limit_train_batches <= 0:
        die(f"--limit_train_batches must be positive, got {args.limit_train_batches}")
    for flag in ("batch_size", "val_size", "repeats"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
