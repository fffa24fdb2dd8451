"""
Title: Parity: what does the Lightning Trainer cost over a plain PyTorch loop?
Description: Train one CNN on identical batches with PyTorch and Lightning; compare time, memory, losses.

What it measures
    Three configurations train the same network from the same initial weights on the same batches
    in the same order, with the same optimizer and schedule (AdamW + one-cycle, lr 0.01, batch 128):
      pytorch         a plain loop in the pytorch/examples style: train(), validate(), a progress
                      line every 10 batches; it computes the same per-epoch numbers as the script
                      (mean train loss, train and valid accuracy with the same torchmetrics objects)
      lightning       the Trainer exactly as Basic_usage_of_lightning.py sets it up: CSV and
                      TensorBoard loggers, ModelCheckpoint on valid_acc, progress bar, model summary
      lightning_bare  the same module with logger, checkpointing, progress bar and summary off
    and, when --configs names them, the same with the network compiled (torch.compile, in place):
      pytorch_compiled    the pytorch loop with model.compile(mode=--compile_mode)
      lightning_compiled  the lightning run as `Basic_usage_of_lightning.py --compile` trains it
    Every configuration validates once per epoch, so all three do the same arithmetic: the
    per-step training losses must agree (they are compared and reported), and any difference in
    time is the framework's. (Lightning's 2-batch sanity check before training restores the random
    state after it, so it changes no batch; its time counts as outside the epochs.)
    Reported: seconds per epoch (median over repeats, the first epoch of each run dropped as
    warm-up), the ratio to the PyTorch loop (median of the per-repeat ratios) and the same as
    milliseconds per training step, the time the process spent outside the epochs (interpreter,
    imports, data, Trainer setup), peak RSS (each configuration runs in its own process, since
    RSS is a per-process maximum), on a GPU the peak of allocated GPU memory, and in the CSV the
    RSS when training started. A compiled row is compared with the compiled loop (x PyTorch,
    losses: compiled dropout draws its own random numbers, so eager and compiled losses differ),
    and also with its eager row (x eager); "compile s" is its one-time compile, as torch records
    it, with empty caches each run (what a user's first run pays; it falls in the warm-up epoch
    and, for Lightning, in the sanity check).

Why the Lightning runs import Basic_usage_of_lightning.py
    The question is what a user of our scripts pays. Importing MNISTClassifier measures the module
    the script trains, line for line (its torchmetrics objects, its self.log calls), so the
    benchmark cannot drift into a leaner copy that flatters Lightning. The PyTorch loop keeps its
    own copy of MNISTConvNet (in benchmarks/common.py) instead of importing it, because importing
    the script would load Lightning, pandas and matplotlib into the PyTorch process and inflate its
    start-up and memory; the copy is proven identical by the losses matching from the first step.

How to run
    python benchmarks/parity.py --data_dir /path/to/datasets         # full: 3 repeats x 3 epochs, ~7 min on 2 cores
    python benchmarks/parity.py --data_dir /path/to/datasets --quick  # about 30 s
    python benchmarks/parity.py --accelerator gpu                  # the same on a GPU
    python benchmarks/parity.py --configs pytorch,lightning --repeats 5
    python benchmarks/parity.py --configs pytorch,lightning,pytorch_compiled,lightning_compiled  # compiled rows

What it writes (under --output_dir, default outputs/benchmarks)
    parity.csv         one row per configuration
    parity.md          the Markdown table as printed, with the machine it ran on
    parity_runs/       each run's console output (*.log) and what the lightning run writes
                       (csv_logs/, tb_logs/, checkpoints/), as a user's run would
"""

# %% Imports
import argparse
import importlib.util
import json
import os
import resource
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
                    cold_compile_env, compile_seconds, device_name, die, environment_line, fill_mode_defaults,
                    lightning_accelerator, markdown_table, mnist_tensors, number, prepare_run, seeded_split,
                    synchronized_time, torch_device, write_report)

ROOT = Path(__file__).resolve().parent.parent
BASIC_SCRIPT = ROOT / "Basic_usage_of_lightning.py"
CONFIGS = {
    "pytorch": "PyTorch loop (pytorch/examples style)",
    "lightning": "Lightning, as the script runs it",
    "lightning_bare": "Lightning, logging/checkpoint/progress bar off",
    "pytorch_compiled": "PyTorch loop, network compiled",
    "lightning_compiled": "Lightning, as the script runs it with --compile",
}
DEFAULT_CONFIGS = ("pytorch", "lightning", "lightning_bare")
# Each row's ratios and losses are against its own plain loop; a compiled row also against its eager row.
REFERENCE = {config: "pytorch_compiled" if config.endswith("_compiled") else "pytorch" for config in CONFIGS}
COMPILED_NOTE = ("Compiled rows (torch.compile mode {mode}): x PyTorch and losses against the compiled loop, "
                 "x eager against the same configuration uncompiled, compile s is the one-time compile "
                 "(empty caches), already left out of s/epoch with the warm-up epoch. ")
LOG_INTERVAL = 10  # pytorch/examples prints a progress line every 10 batches
LOSS_TOLERANCE = 1e-5  # Lightning's own parity test compares losses to 5 decimals
# Kept in the CSV, left out of the printed table so that it fits a README.
CSV_ONLY = ("RSS before training MB", "steps", "final train loss")
# Full mode gives the README numbers; --quick proves the benchmark works in about 30 s.
FULL = dict(repeats=3, epochs=3, limit_train_batches=1.0, limit_val_batches=1.0)
QUICK = dict(repeats=1, epochs=3, limit_train_batches=40, limit_val_batches=5)


# %% PyTorch loop
def train(model, device, loader, optimizer, scheduler, epoch, max_batches, train_acc, losses):
    """One epoch, as pytorch/examples writes it, plus the numbers the script's training_step logs."""
    model.train()
    loss_sum, count = torch.zeros((), device=device), 0  # summed on the device: no sync per step
    for batch_idx, (images, labels) in enumerate(loader):
        if batch_idx == max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        train_acc.update(logits, labels)  # what the script's training_step does; computed once per epoch
        loss_sum += loss.detach() * len(labels)
        count += len(labels)
        losses.append(loss.detach())
        if batch_idx % LOG_INTERVAL == 0:
            print(f"Train Epoch: {epoch} [{batch_idx * len(images)}/{len(loader.dataset)}]\tLoss: {loss.item():.6f}")
    return loss_sum.item() / count, train_acc.compute().item()


def validate(model, device, loader, max_batches, valid_acc):
    model.eval()
    loss_sum, count = torch.zeros((), device=device), 0
    with torch.no_grad():
        for batch_idx, (images, labels) in enumerate(loader):
            if batch_idx == max_batches:
                break
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            valid_acc.update(logits, labels)
            count += len(labels)
    accuracy = valid_acc.compute().item()
    valid_acc.reset()
    return loss_sum.item() / count, accuracy


def run_pytorch(args, device: torch.device) -> dict:
    # What Trainer(deterministic=True) in the script switches on, so both sides run the same kernels.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)  # what pl.seed_everything does for torch
    model = MNISTConvNet().to(device)
    if args.run == "pytorch_compiled":
        model.compile(mode=args.compile_mode)  # in place, as the script's configure_model does
    train_set, valid_set = seeded_split(mnist_tensors(args.data_dir), args.val_size, args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    valid_loader = DataLoader(valid_set, batch_size=args.batch_size)
    train_batches = batch_count(len(train_loader), args.limit_train_batches)
    valid_batches = batch_count(len(valid_loader), args.limit_val_batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                    total_steps=args.epochs * train_batches)
    train_acc = Accuracy(task="multiclass", num_classes=10).to(device)
    valid_acc = Accuracy(task="multiclass", num_classes=10).to(device)

    losses, marks = [], []
    for epoch in range(1, args.epochs + 1):
        marks.append(mark(device))
        train_loss, train_accuracy = train(model, device, train_loader, optimizer, scheduler, epoch,
                                           train_batches, train_acc, losses)
        train_acc.reset()
        valid_loss, valid_accuracy = validate(model, device, valid_loader, valid_batches, valid_acc)
        print(f"epoch {epoch}: train_loss {train_loss:.4f} train_acc {train_accuracy:.4f} "
              f"valid_loss {valid_loss:.4f} valid_acc {valid_accuracy:.4f}")
    marks.append(mark(device))
    return {"marks": marks, "losses": torch.stack(losses).tolist()}


# %% Lightning
def run_lightning(args, device: torch.device, as_the_script_runs_it: bool, compile_mode: str = None) -> dict:
    # Imported here, not at the top, so the PyTorch process never loads Lightning.
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    basic = load_basic_script()

    class EpochClock(pl.Callback):
        """Marks each epoch's start and the end of training, and keeps every step's loss."""

        def __init__(self):
            self.marks, self.losses = [], []

        def on_train_epoch_start(self, trainer, pl_module):
            self.marks.append(mark(device))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(outputs["loss"].detach())

        def on_train_end(self, trainer, pl_module):
            self.marks.append(mark(device))

    out = Path(args.run_dir)
    clock = EpochClock()
    if as_the_script_runs_it:  # the Trainer of Basic_usage_of_lightning.py's main()
        checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best",
                                     monitor="valid_acc", mode="max", enable_version_counter=False)
        extras = dict(logger=[CSVLogger(out, name="csv_logs"), TensorBoardLogger(out, name="tb_logs")],
                      callbacks=[checkpoint, clock])
    else:
        extras = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[clock])

    pl.seed_everything(args.seed, workers=True, verbose=False)
    model = basic.MNISTClassifier(data_dir=args.data_dir, batch_size=args.batch_size, lr=args.lr,
                                  val_size=args.val_size, seed=args.seed, compile_mode=compile_mode)
    trainer = pl.Trainer(accelerator=lightning_accelerator(device), devices=1, max_epochs=args.epochs,
                         limit_train_batches=args.limit_train_batches,
                         limit_val_batches=args.limit_val_batches, deterministic=True, **extras)
    trainer.fit(model)
    return {"marks": clock.marks, "losses": torch.stack(clock.losses).tolist()}


def load_basic_script():
    """Basic_usage_of_lightning.py as a module (it is a script, not an installed package)."""
    spec = importlib.util.spec_from_file_location("basic_usage_of_lightning", BASIC_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# %% Measurement
def run_one_configuration(args) -> int:
    """Child process: train one configuration and write its measurements as JSON."""
    device = torch_device(args.accelerator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.run.startswith("pytorch"):
        result = run_pytorch(args, device)
    else:
        result = run_lightning(args, device, as_the_script_runs_it=args.run != "lightning_bare",
                               compile_mode=args.compile_mode if args.run == "lightning_compiled" else None)
    walls, rss = zip(*result.pop("marks"))  # one mark per epoch start, one at the end
    result.update(
        epoch_seconds=[b - a for a, b in zip(walls, walls[1:])],
        rss_before_training_mb=rss[0], peak_rss_mb=peak_rss_mb(),
        gpu_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        device=device_name(device), threads=torch.get_num_threads(), compile_seconds=compile_seconds())
    Path(args.result_json).write_text(json.dumps(result))
    return 0


def launch(args, config: str, repeat: int, out: Path) -> dict:
    """Run one configuration in a fresh process; its wall time covers interpreter start to exit."""
    run_dir = out / "parity_runs" / config
    shutil.rmtree(run_dir, ignore_errors=True)  # every run starts as a user's first run does
    run_dir.mkdir(parents=True)
    result_json = run_dir / "result.json"
    command = [sys.executable, __file__, "--run", config, "--result_json", str(result_json),
               "--run_dir", str(run_dir), "--data_dir", args.data_dir, "--accelerator", args.accelerator,
               "--batch_size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed),
               "--val_size", str(args.val_size), "--epochs", str(args.epochs),
               "--limit_train_batches", str(args.limit_train_batches),
               "--limit_val_batches", str(args.limit_val_batches), "--compile_mode", args.compile_mode]
    log = out / "parity_runs" / f"{config}_repeat{repeat}.log"
    env = cold_compile_env(run_dir) if config.endswith("_compiled") else None
    started = time.perf_counter()
    with open(log, "w") as console:  # progress lines and bars go to a file, as under nohup
        finished = subprocess.run(command, stdout=console, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        print("\n".join(log.read_text().splitlines()[-15:]), file=sys.stderr)
        die(f"the {config} run failed (exit {finished.returncode}); its output is in {log} (last lines above)")
    result = json.loads(result_json.read_text())
    result["wall_seconds"] = wall
    return result


def summarize(runs: dict, warmup_epochs: int) -> list:
    """One row per configuration: medians over repeats, ratios paired within each repeat."""
    def kept(run):
        return run["epoch_seconds"][warmup_epochs:]

    rows = []
    for config, repeats in runs.items():
        pairs = list(zip(repeats, runs[REFERENCE.get(config, "pytorch")]))  # the runs of one repeat ran side by side
        wall = [s for run in repeats for s in kept(run)]
        loss_gap = max(max(abs(a - b) for a, b in zip(run["losses"], ref["losses"])) for run, ref in pairs)
        same_steps = all(len(run["losses"]) == len(ref["losses"]) for run, ref in pairs)
        steps_per_epoch = len(repeats[0]["losses"]) / len(repeats[0]["epoch_seconds"])
        row = {
            "configuration": CONFIGS[config],
            "s/epoch": round(statistics.median(wall), 2),
            "min-max": f"{min(wall):.2f}-{max(wall):.2f}",
            "x PyTorch": round(statistics.median(
                statistics.median(kept(run)) / statistics.median(kept(ref)) for run, ref in pairs), 3),
            # A framework's cost is per step, not per epoch: this number carries over to other models.
            "ms/step over PyTorch": round(1000 / steps_per_epoch * statistics.median(
                statistics.median(kept(run)) - statistics.median(kept(ref)) for run, ref in pairs), 2),
            "s outside epochs": round(statistics.median(run["wall_seconds"] - sum(run["epoch_seconds"])
                                                        for run in repeats), 1),
            "RSS before training MB": round(max(run["rss_before_training_mb"] for run in repeats)),
            "peak RSS MB": round(max(run["peak_rss_mb"] for run in repeats)),
            "losses match": f"{'yes' if same_steps and loss_gap <= LOSS_TOLERANCE else 'NO'} (max diff {loss_gap:.1e})",
            "steps": len(repeats[0]["losses"]),
            "final train loss": round(repeats[0]["losses"][-1], 6),
        }
        eager = config.removesuffix("_compiled")
        if config != eager:
            if eager in runs:
                row["x eager"] = round(statistics.median(statistics.median(kept(run)) / statistics.median(kept(ref))
                                                         for run, ref in zip(repeats, runs[eager])), 3)
            row["compile s"] = round(statistics.median(run["compile_seconds"] for run in repeats), 1)
        if repeats[0]["gpu_peak_mb"] is not None:
            row["GPU peak MB"] = round(max(run["gpu_peak_mb"] for run in repeats))
        rows.append(row)
    return rows


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run:
        return run_one_configuration(args)
    device, out = prepare_run(args, "parity_runs")
    configs = args.configs
    if any(config.endswith("_compiled") for config in configs):
        check_compile(args.compile_mode, device)
    print(f"parity: {', '.join(configs)} x {args.repeats} repeats x {args.epochs} epochs "
          f"(first dropped), train batches {args.limit_train_batches}, on {device_name(device)}")

    started = time.perf_counter()
    runs = {config: [] for config in configs}
    for repeat in range(args.repeats):
        # Rotate the order (A B C, B C A, ...) so no configuration always runs first or last.
        for config in configs[repeat % len(configs):] + configs[:repeat % len(configs)]:
            result = launch(args, config, repeat, out)
            runs[config].append(result)
            print(f"  repeat {repeat + 1}/{args.repeats} {config:15s} "
                  f"s/epoch {' '.join(f'{s:.2f}' for s in result['epoch_seconds'])}  "
                  f"wall {result['wall_seconds']:.1f} s")
    rows = summarize(runs, warmup_epochs=1)

    table = markdown_table([{k: v for k, v in row.items() if k not in CSV_ONLY} for row in rows])
    same_loss = len({row["final train loss"] for row in rows}) == 1
    peak_before_training = all(row["RSS before training MB"] == row["peak RSS MB"] for row in rows)
    notes = (f"Each run: {rows[0]['steps']} training steps, final train loss {rows[0]['final train loss']}"
             f"{' in every configuration' if same_loss else ' (not the same everywhere: see the CSV)'}. "
             f"Medians of {args.repeats} runs x {args.epochs - 1} epochs (warm-up epoch dropped). "
             f"{'Every run reached its peak RSS before training started (loading MNIST). ' if peak_before_training else ''}"
             f"{COMPILED_NOTE.format(mode=args.compile_mode) if 'pytorch_compiled' in configs else ''}"
             f"parity.csv has these and a few more columns.\n"
             + environment_line(device, threads=runs["pytorch"][0]["threads"]))
    write_report(out, "parity", "Parity", table, notes, rows, argv, started)
    return 0


def mark(device: torch.device) -> tuple:
    """The clock and the peak RSS so far, once the device has finished its queued work
    (GPU kernels run asynchronously)."""
    return synchronized_time(device), peak_rss_mb()


def peak_rss_mb() -> float:
    # ru_maxrss: the most resident memory this process has held; KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, QUICK, FULL)
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"which configurations, comma-separated, from {', '.join(CONFIGS)}")
    add_compile_flag(parser, rows="*_compiled configurations")
    parser.add_argument("--repeats", type=int, metavar="N", help="processes per configuration (default: by mode)")
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs per process, the first one is warm-up")
    parser.add_argument("--limit_train_batches", "--limit-train-batches", type=number, metavar="N|F",
                        help="training batches per epoch: a count or a fraction")
    parser.add_argument("--limit_val_batches", "--limit-val-batches", type=number, metavar="N|F",
                        help="validation batches per epoch: a count or a fraction")
    add_recipe_flags(parser, lr_help="peak learning rate of the one-cycle schedule")
    # Set by the parent for each child process; a user never needs them.
    parser.add_argument("--run", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--result_json", help=argparse.SUPPRESS)
    parser.add_argument("--run_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    fill_mode_defaults(args, QUICK, FULL)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        die(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if "pytorch" not in args.configs:
        die("--configs must include pytorch: every ratio and loss check is against it")
    if "lightning_compiled" in args.configs and "pytorch_compiled" not in args.configs:
        die("--configs with lightning_compiled must include pytorch_compiled: its ratio and losses are against it")
    if args.epochs < 2:
        die(f"--epochs must be at least 2 (the first one is dropped as warm-up), got {args.epochs}")
    for flag in ("repeats", "batch_size", "val_size"):
        if getattr(args, flag) < 1:
            die(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    for flag in ("limit_train_batches", "limit_val_batches"):
        if getattr(args, flag) <= 0:
            die(f"--{flag} must be positive, got {getattr(args, flag)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
