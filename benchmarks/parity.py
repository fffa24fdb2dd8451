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
    Every configuration validates once per epoch, so all three do the same arithmetic: the
    per-step training losses must agree (they are compared and reported), and any difference in
    time is the framework's. (Lightning's 2-batch sanity check before training restores the random
    state after it, so it changes no batch; its time counts as outside the epochs.)
    Reported: seconds per epoch (median over repeats, the first epoch of each run dropped as
    warm-up), the ratio to the PyTorch loop (median of the per-repeat ratios) and the same as
    milliseconds per training step, the time the process spent outside the epochs (interpreter,
    imports, data, Trainer setup), peak RSS (each configuration runs in its own process, since
    RSS is a per-process maximum), on a GPU the peak of allocated GPU memory, and in the CSV the
    RSS when training started.

Why the Lightning runs import Basic_usage_of_lightning.py
    The question is what a user of our scripts pays. Importing MNISTClassifier measures the module
    the script trains, line for line (its torchmetrics objects, its self.log calls), so the
    benchmark cannot drift into a leaner copy that flatters Lightning. The PyTorch loop keeps its
    own copy of MNISTConvNet instead of importing it, because importing the script would load
    Lightning, pandas and matplotlib into the PyTorch process and inflate its start-up and memory;
    the copy is proven identical by the losses matching from the first step.

How to run
    python benchmarks/parity.py --data_dir ../shared/data          # full: 3 repeats x 3 epochs, ~7 min on 2 cores
    python benchmarks/parity.py --data_dir ../shared/data --quick  # about 30 s
    python benchmarks/parity.py --accelerator gpu                  # the same on a GPU
    python benchmarks/parity.py --configs pytorch,lightning --repeats 5

What it writes (under --output_dir, default outputs/benchmarks)
    parity.csv         one row per configuration
    parity.md          the Markdown table as printed, with the machine it ran on
    parity_runs/       each run's console output (*.log) and what the lightning run writes
                       (csv_logs/, tb_logs/, checkpoints/), as a user's run would
"""

# %% Imports
import argparse
import contextlib
import csv
import importlib.util
import io
import json
import os
import platform
import resource
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
CONFIGS = {
    "pytorch": "PyTorch loop (pytorch/examples style)",
    "lightning": "Lightning, as the script runs it",
    "lightning_bare": "Lightning, logging/checkpoint/progress bar off",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
LOG_INTERVAL = 10  # pytorch/examples prints a progress line every 10 batches
LOSS_TOLERANCE = 1e-5  # Lightning's own parity test compares losses to 5 decimals
# Kept in the CSV, left out of the printed table so that it fits a README.
CSV_ONLY = ("RSS before training MB", "steps", "final train loss")
# Full mode gives the README numbers; --quick proves the benchmark works in about 30 s.
FULL = dict(repeats=3, epochs=3, limit_train_batches=1.0, limit_val_batches=1.0)
QUICK = dict(repeats=1, epochs=3, limit_train_batches=40, limit_val_batches=5)


# %% Model
class MNISTConvNet(nn.Module):
    """A copy of MNISTConvNet in Basic_usage_of_lightning.py (same layers in the same order, so
    the same seed gives the same weights; the matching losses prove it)."""

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
        train_acc(logits, labels)  # the call the script's training_step makes (torchmetrics' loop idiom)
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
    train_set, valid_set = mnist_splits(args.data_dir, args.val_size, args.seed)
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
def run_lightning(args, device: torch.device, as_the_script_runs_it: bool) -> dict:
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
                                  val_size=args.val_size, seed=args.seed)
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


def lightning_accelerator(device: torch.device) -> str:
    return {"cuda": "gpu"}.get(device.type, device.type)


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


def mnist_splits(data_dir: str, val_size: int, seed: int):
    """The script's data: normalized tensors decoded once, split 55000/5000 with a seeded generator."""
    dataset = MNIST(data_dir, train=True, download=False)
    images = dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD).unsqueeze(1)
    full = TensorDataset(images, dataset.targets)
    generator = torch.Generator().manual_seed(seed)
    return random_split(full, [len(full) - val_size, val_size], generator=generator)


def batch_count(available: int, limit) -> int:
    """How many batches a limit_*_batches value means, as the Trainer counts them."""
    return min(available, limit) if isinstance(limit, int) else int(available * limit)


# %% Measurement
def run_one_configuration(args) -> int:
    """Child process: train one configuration and write its measurements as JSON."""
    device = torch_device(args.accelerator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.run == "pytorch":
        result = run_pytorch(args, device)
    else:
        result = run_lightning(args, device, as_the_script_runs_it=args.run == "lightning")
    walls, rss = zip(*result.pop("marks"))  # one mark per epoch start, one at the end
    result.update(
        epoch_seconds=[b - a for a, b in zip(walls, walls[1:])],
        rss_before_training_mb=rss[0], peak_rss_mb=peak_rss_mb(),
        gpu_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        device=device_name(device), threads=torch.get_num_threads())
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
               "--limit_val_batches", str(args.limit_val_batches)]
    log = out / "parity_runs" / f"{config}_repeat{repeat}.log"
    started = time.perf_counter()
    with open(log, "w") as console:  # progress lines and bars go to a file, as under nohup
        finished = subprocess.run(command, stdout=console, stderr=subprocess.STDOUT)
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

    reference = runs["pytorch"]
    rows = []
    for config, repeats in runs.items():
        pairs = list(zip(repeats, reference))  # the runs of one repeat ran side by side
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
        if repeats[0]["gpu_peak_mb"] is not None:
            row["GPU peak MB"] = round(max(run["gpu_peak_mb"] for run in repeats))
        rows.append(row)
    return rows


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run:
        return run_one_configuration(args)
    prepare_mnist(args.data_dir)
    check_val_size(args.data_dir, args.val_size)
    device = torch_device(args.accelerator)
    out = Path(args.output_dir)
    (out / "parity_runs").mkdir(parents=True, exist_ok=True)
    configs = args.configs
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
             f"parity.csv has these and a few more columns.\n"
             + environment_line(device, runs["pytorch"][0]["threads"]))
    command = "python benchmarks/parity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("\n" + table + "\n\n" + notes)
    write_csv(out / "parity.csv", rows)
    (out / "parity.md").write_text(
        f"### Parity\n\n{table}\n\n{notes}\nCommand: `{command.strip()}`; "
        f"benchmark wall {time.perf_counter() - started:.0f} s.\n")
    print(f"\nwrote {out / 'parity.csv'} and {out / 'parity.md'} "
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


def environment_line(device: torch.device, threads: int) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return (f"Machine: {cpu}, {os.cpu_count()} logical cores, device {device_name(device)}, "
            f"torch threads {threads}; load average {os.getloadavg()[0]:.2f}. "
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


def mark(device: torch.device) -> tuple:
    """The clock and the peak RSS so far, once the device has finished its queued work
    (GPU kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter(), peak_rss_mb()


def peak_rss_mb() -> float:
    # ru_maxrss: the most resident memory this process has held; KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


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
    parser.add_argument("--configs", default=",".join(CONFIGS), help="which configurations, comma-separated")
    parser.add_argument("--repeats", type=int, metavar="N", help="processes per configuration (default: by mode)")
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs per process, the first one is warm-up")
    parser.add_argument("--limit_train_batches", "--limit-train-batches", type=number, metavar="N|F",
                        help="training batches per epoch: a count or a fraction")
    parser.add_argument("--limit_val_batches", "--limit-val-batches", type=number, metavar="N|F",
                        help="validation batches per epoch: a count or a fraction")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--seed", type=int, default=42, help="seeds weights, split and shuffling")
    parser.add_argument("--val_size", "--val-size", type=int, default=5000, help="training images held out")
    # Set by the parent for each child process; a user never needs them.
    parser.add_argument("--run", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--result_json", help=argparse.SUPPRESS)
    parser.add_argument("--run_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        die(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if "pytorch" not in args.configs:
        die("--configs must include pytorch: every ratio and loss check is against it")
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
