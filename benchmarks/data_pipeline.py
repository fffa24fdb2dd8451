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
    python benchmarks/data_pipeline.py --data_dir /path/to/datasets          # full: 3 epochs each, ~3.5 min
    python benchmarks/data_pipeline.py --data_dir /path/to/datasets --quick   # 30 batches, ~20 s
    python benchmarks/data_pipeline.py --workers 0,2,4 --accelerator gpu

What it writes (under --output_dir, default outputs/benchmarks)
    data_pipeline.csv   one row per pipeline
    data_pipeline.md    the Markdown table as printed, with the machine it ran on
"""

# %% Imports
import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms
from torchvision.datasets import MNIST

from common import (MNIST_MEAN, MNIST_STD, MNISTConvNet, add_recipe_flags, batch_count, benchmark_parser, device_name,
                    die, environment_line, fill_mode_defaults, markdown_table, mnist_tensors, number, prepare_run,
                    seeded_split, synchronized_time, whole_numbers, write_report)

FULL = dict(epochs=3, limit_train_batches=1.0)
QUICK = dict(epochs=2, limit_train_batches=30)


# %% Data
def transformed_mnist(data_dir: str):
    """The pytorch/examples pipeline: PIL image -> ToTensor -> Normalize, for every sample, every epoch."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    return MNIST(data_dir, train=True, download=False, transform=transform)


def preloaded_mnist(data_dir: str) -> TensorDataset:
    """The scripts' pipeline: the same arithmetic, done once for the whole split."""
    return mnist_tensors(data_dir, train=True)


def training_split(dataset, val_size: int, seed: int):
    """The scripts' 55000-image training split (the same indices for every pipeline)."""
    return seeded_split(dataset, val_size, seed)[0]


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
    device, out = prepare_run(args)
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
             f"(largest pixel difference {pixel_difference:.1e}).\n"
             + environment_line(device, packages=("torchvision",)))
    write_report(out, "data_pipeline", "Data pipeline", table, notes, rows, argv, started)
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, QUICK, FULL)
    parser.add_argument("--workers", default="0,2", metavar="N[,N...]",
                        help="DataLoader worker counts to try with the per-sample transforms")
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs per pipeline, the first one is warm-up")
    parser.add_argument("--limit_train_batches", "--limit-train-batches", type=number, metavar="N|F",
                        help="batches per epoch: a count or a fraction (default: by mode)")
    add_recipe_flags(parser, lr_help="AdamW learning rate")
    args = parser.parse_args(argv)

    fill_mode_defaults(args, QUICK, FULL)
    args.workers = whole_numbers("workers", args.workers, example="0,2")
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
