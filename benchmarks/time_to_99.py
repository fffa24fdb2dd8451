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
    pytorch_compiled, lightning_compiled   the same two with the network compiled (the loop with
                model.compile(mode=--compile_mode), the script with --compile MODE), compile time
                included, with torch.compile's caches empty as on a user's first run
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
    python benchmarks/time_to_99.py --data_dir /path/to/datasets          # full: 2 and 3 epochs, twice, ~7 min
    python benchmarks/time_to_99.py --data_dir /path/to/datasets --quick   # 1 short epoch, ~25 s
    python benchmarks/time_to_99.py --epochs 1,2,3 --repeats 3 --accelerator gpu
    python benchmarks/time_to_99.py --frameworks pytorch,lightning,pytorch_compiled,lightning_compiled

What it writes (under --output_dir, default outputs/benchmarks)
    time_to_99.csv     one row per run
    time_to_99.md      the Markdown table as printed, with the machine it ran on
    time_to_99_runs/   each run's console output (*.log) and what the Basic script writes
"""

# %% Imports
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchmetrics import Accuracy

from common import (MNISTConvNet, add_compile_flag, add_recipe_flags, batch_count, benchmark_parser, check_compile,
                    cold_compile_env, device_name, die, environment_line, fill_mode_defaults, markdown_table,
                    mnist_tensors, number, prepare_run, seeded_split, torch_device, whole_numbers, write_report)

ROOT = Path(__file__).resolve().parent.parent
BASIC_SCRIPT = ROOT / "Basic_usage_of_lightning.py"
FRAMEWORKS = ("pytorch", "lightning", "pytorch_compiled", "lightning_compiled")
FULL = dict(epochs="2,3", limit_train_batches=1.0, repeats=2)
QUICK = dict(epochs="1", limit_train_batches=100, repeats=1)


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
    if args.run == "pytorch_compiled":
        model.compile(mode=args.compile_mode)  # in place, as the script's --compile does
    train_set, valid_set = seeded_split(mnist_tensors(args.data_dir, train=True), args.val_size, args.seed)
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


# %% Measurement
def launch(args, framework: str, epochs: int, repeat: int, out: Path) -> tuple:
    """One run in a fresh process, timed from launch to exit: (seconds, test accuracy)."""
    run_dir = out / "time_to_99_runs" / f"{framework}_{epochs}_epochs"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    recipe = ["--data_dir", args.data_dir, "--epochs", str(epochs), "--batch_size", str(args.batch_size),
              "--lr", str(args.lr), "--seed", str(args.seed), "--val_size", str(args.val_size),
              "--limit_train_batches", str(args.limit_train_batches), "--accelerator", args.accelerator]
    compiled = ["--compile", args.compile_mode] if framework.endswith("_compiled") else []
    if framework.startswith("lightning"):
        # --devices 1: one device, like the plain loop (on a multi-GPU machine "auto" means DDP).
        command = [sys.executable, str(BASIC_SCRIPT), *recipe, *compiled, "--devices", "1", "--output_dir", str(run_dir)]
    else:
        command = [sys.executable, __file__, "--run", framework, *recipe, "--run_dir", str(run_dir),
                   "--compile_mode", args.compile_mode]
    log = out / "time_to_99_runs" / f"{framework}_{epochs}_epochs_run{repeat}.log"
    started = time.perf_counter()
    with open(log, "w") as console:
        finished = subprocess.run(command, stdout=console, stderr=subprocess.STDOUT,
                                  env=cold_compile_env(run_dir) if compiled else None)
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
    if isinstance(times.get("pytorch"), float):
        for row in summary:
            if isinstance(times[row["framework"]], float):
                row["x PyTorch"] = round(times[row["framework"]] / times["pytorch"], 2)
    return summary


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run:
        return run_pytorch(args)
    device, out = prepare_run(args, "time_to_99_runs")
    if any(framework.endswith("_compiled") for framework in args.frameworks):
        check_compile(args.compile_mode, device)
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
    compiled = any(framework.endswith("_compiled") for framework in args.frameworks)
    notes = (f"Wall time from launch to exit, median of {args.repeats} run(s) each"
             f"{f'; *_compiled: torch.compile mode {args.compile_mode}, compile included, caches empty' if compiled else ''}"
             f".\n" + environment_line(device))
    write_report(out, "time_to_99", f"Time to {args.target:.1%} test accuracy", tables, notes, rows, argv, started)
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, QUICK, FULL)
    parser.add_argument("--frameworks", default="pytorch,lightning",
                        help=f"which sides to run, comma-separated, from {', '.join(FRAMEWORKS)}")
    add_compile_flag(parser, rows="*_compiled runs")
    parser.add_argument("--epochs", metavar="N[,N...]", help="one run per value, each its own schedule (default: by mode)")
    parser.add_argument("--limit_train_batches", "--limit-train-batches", type=number, metavar="N|F",
                        help="training batches per epoch: a count or a fraction (default: by mode)")
    parser.add_argument("--repeats", type=int, metavar="N", help="runs of each, for a median (default: by mode)")
    parser.add_argument("--target", type=float, default=0.99, help="the test accuracy to reach")
    add_recipe_flags(parser, lr_help="peak learning rate of the one-cycle schedule")
    # Set by the parent for the plain-loop child process; a user never needs them.
    parser.add_argument("--run", choices=["pytorch", "pytorch_compiled"], help=argparse.SUPPRESS)
    parser.add_argument("--run_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    fill_mode_defaults(args, QUICK, FULL)
    args.epochs = whole_numbers("epochs", args.epochs, example="2,3")
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
