"""
Title: Data pipeline: per-sample transforms with workers, or tensors preloaded once?
Description: Seconds per MNIST epoch for three input pipelines, loading alone and while training.

What it measures
    transforms, N workers   torchvision's MNIST with ToTensor + Normalize applied to every sample
                            of every epoch (the pytorch/examples pipeline), N DataLoader workers
    preloaded tensors       the whole split converted to normalized tensors once, then a
                            TensorDataset (what the repository's scripts do)
    For each pipeline: the one-time setup, the seconds per epoch to only load the batches (and
    move them to the device), and the seconds per epoch to train the scripts' CNN on them (AdamW,
    batch 128, the 55000-image training split). Epochs are interleaved across pipelines (A B C
    A B C ...) to spread noise; the first epoch of each is warm-up (worker start) and dropped;
    the rest give a median.
    How to read it: "load only" is a floor no accelerator can beat. On a CPU the network's own
    arithmetic dominates, so the pipeline is a modest share of an epoch; on a GPU the arithmetic
    takes a second or two per epoch, so a pipeline that needs several seconds to load an epoch
    sets the pace, and preloading (or enough workers) is what makes the GPU worth having.

How to run
    python benchmarks/data_pipeline.py --data_dir ../shared/data           # full: 3 epochs each, ~3.5 min
    python benchmarks/data_pipeline.py --data_dir ../shared/data --quick   # 30 batches, ~20 s
    python benchmarks/data_pipeline.py --workers 0,2,4 --accelerator gpu

What it writes (under --output_dir, default outputs/benchmarks)
    data_pipeline.csv   one row per pipeline
    data_pipeline.md    the Markdown table as printed, with the machine it ran on
"""

# %% Imports
import argparse
import contextlib
import csv
import io
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchvision import transforms
from torchvision.datasets import MNIST

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FULL = dict(epochs=3, limit_train_batches=1.0)
QUICK = dict(epochs=2, limit_train_batches=30)


# %% Model
class MNISTConvNet(nn.Module):
    """A copy of MNISTConvNet in Basic_usage_of_lightning.py: the scripts' network."""

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


def transformed_mnist(data_dir: str):
    """The pytorch/examples pipeline: PIL image -> ToTensor -> Normalize, for every sample, every epoch."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    return MNIST(data_dir, train=True, download=False, transform=transform)


def preloaded_mnist(data_dir: str) -> TensorDataset:
    """The scripts' pipeline: the same arithmetic, done once for the whole split."""
    dataset = MNIST(data_dir, train=True, download=False)
    images = dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD).unsqueeze(1)
    return TensorDataset(images, dataset.targets)


def training_split(dataset, val_size: int, seed: int):
    """The scripts' 55000-image training split (the same indices for every pipeline)."""
    generator = torch.Generator().manual_seed(seed)
    return random_split(dataset, [len(dataset) - val_size, val_size], generator=generator)[0]


def build_pipelines(args, device: torch.device) -> list:
    """Each pipeline: its name, workers, setup seconds, DataLoader, and a model of its own."""
    pipelines = []
    kinds = [("transforms", workers) for workers in args.workers] + [("preloaded", 0)]
    for kind, workers in kinds:
        started = time.perf_counter()
        dataset = transformed_mnist(args.data_dir) if kind == "transforms" else preloaded_mnist(args.data_dir)
        train_set = training_split(dataset, args.val_size, args.seed)
        setup = time.perf_counter() - started
        # Pinned memory speeds host-to-GPU copies; persistent workers start once, not every epoch.
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(args.seed))
        torch.manual_seed(args.seed)
        model = MNISTConvNet().to(device)
        name = (f"per-sample transforms, {workers} worker{'s' if workers != 1 else ''}"
                if kind == "transforms" else "tensors preloaded once, 0 workers")
        pipelines.append(dict(name=name, workers=workers, setup=setup, loader=loader, model=model,
                              optimizer=torch.optim.AdamW(model.parameters(), lr=args.lr),
                              load_seconds=[], train_seconds=[]))
    return pipelines


def largest_pixel_difference(args) -> float:
    """The pipelines must deliver the same images: compare the first 256 of the split."""
    transformed = training_split(transformed_mnist(args.data_dir), args.val_size, args.seed)
    preloaded = training_split(preloaded_mnist(args.data_dir), args.val_size, args.seed)
    return max((transformed[i][0] - preloaded[i][0]).abs().max().item() for i in range(min(256, len(preloaded))))


# %% Measurement
def load_epoch(pipeline, device, max_batches) -> float:
    """Seconds to produce one epoch of batches on the device, with no training."""
    started = synchronized_time(device)
    for batch_idx, (images, labels) in enumerate(pipeline["loader"]):
        if batch_idx == max_batches:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    return synchronized_time(device) - started


def train_epoch(pipeline, device, max_batches) -> float:
    """Seconds for one training epoch on this pipeline's batches."""
    model, optimizer = pipeline["model"], pipeline["optimizer"]
    model.train()
    started = synchronized_time(device)
    for batch_idx, (images, labels) in enumerate(pipeline["loader"]):
        if batch_idx == max_batches:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return synchronized_time(device) - started


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_mnist(args.data_dir)
    check_val_size(args.data_dir, args.val_size)
    device = torch_device(args.accelerator)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pixel_difference = largest_pixel_difference(args)
    pipelines = build_pipelines(args, device)
    batches = batch_count(len(pipelines[0]["loader"]), args.limit_train_batches)
    print(f"data pipeline: {len(pipelines)} pipelines x {args.epochs} epochs (first dropped), "
          f"{batches} batches of {args.batch_size}, on {device_name(device)}, torch threads {torch.get_num_threads()}")

    for phase, run_epoch, key in (("load only", load_epoch, "load_seconds"), ("train", train_epoch, "train_seconds")):
        for epoch in range(1, args.epochs + 1):
            for pipeline in pipelines:  # interleaved: each epoch visits every pipeline once
                pipeline[key].append(run_epoch(pipeline, device, batches))
            print(f"  {phase:9s} epoch {epoch}: " + "  ".join(f"{p[key][-1]:.2f}" for p in pipelines))

    preloaded_train = statistics.median(pipelines[-1]["train_seconds"][1:])
    rows = []
    for pipeline in pipelines:
        load, train = (statistics.median(pipeline[key][1:]) for key in ("load_seconds", "train_seconds"))
        rows.append({"pipeline": pipeline["name"], "setup s": round(pipeline["setup"], 2),
                     "load only s/epoch": round(load, 2),
                     "images/s (load only)": round(batches * args.batch_size / load),
                     "train s/epoch": round(train, 2), "train x preloaded": round(train / preloaded_train, 2)})

    table = markdown_table(rows)
    notes = (f"{batches} batches of {args.batch_size} per epoch; the pipelines deliver the same images "
             f"(largest pixel difference {pixel_difference:.1e}).\n" + environment_line(device))
    command = "python benchmarks/data_pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("\n" + table + "\n\n" + notes)
    write_csv(out / "data_pipeline.csv", rows)
    (out / "data_pipeline.md").write_text(
        f"### Data pipeline\n\n{table}\n\n{notes}\nCommand: `{command.strip()}`; "
        f"benchmark wall {time.perf_counter() - started:.0f} s.\n")
    print(f"\nwrote {out / 'data_pipeline.csv'} and {out / 'data_pipeline.md'} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


def batch_count(available: int, limit) -> int:
    """How many batches a limit_train_batches value means, as the Trainer counts them."""
    return min(available, limit) if isinstance(limit, int) else int(available * limit)


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
            f"torchvision {version('torchvision')}.")


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
    parser.add_argument("--workers", default="0,2", metavar="N[,N...]",
                        help="DataLoader worker counts to try with the per-sample transforms")
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs per pipeline, the first one is warm-up")
    parser.add_argument("--limit_train_batches", "--limit-train-batches", type=number, metavar="N|F",
                        help="batches per epoch: a count or a fraction (default: by mode)")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    parser.add_argument("--lr", type=float, default=0.01, help="AdamW learning rate")
    parser.add_argument("--seed", type=int, default=42, help="seeds weights, split and shuffling")
    parser.add_argument("--val_size", "--val-size", type=int, default=5000, help="training images held out")
    args = parser.parse_args(argv)

    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        die(f"--workers takes whole numbers separated by commas, such as 0,2; got {args.workers}")
    if not args.workers or min(args.workers) < 0:
        die(f"--workers: give one or more counts, none negative; got {args.workers}")
    if args.epochs < 2:
        die(f"--epochs must be at least 2 (the first one is dropped as warm-up), got {args.epochs}")
    if args.limit_train_batches <= 0:
        die(f"--limit_train_batches must be positive, got {args.limit_train_batches}")
    for flag in ("batch_size", "val_size"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
