"""Helpers the benchmarks share: flags, errors, devices, MNIST, the network, and the report they write.

Each benchmark imports them with `from common import ...`. That works when a benchmark runs as a
script, from any working directory, because Python puts the script's own folder (benchmarks/)
first on sys.path; code that loads a benchmark by its path (tests/test_benchmarks.py) puts
benchmarks/ on sys.path itself.

It imports torch and never Lightning: parity.py's plain PyTorch process must stay free of
Lightning. torchvision (about 2 s to import) is imported only by the MNIST helpers that need it, so
the benchmarks that do not read MNIST themselves (step_overhead, test_suite_cost, quantization) do
not pay for it.
"""
import argparse
import contextlib
import csv
import io
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset, random_split

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")  # as the script's --compile


# %% Errors and flags
# Copied from Basic_usage_of_lightning.py
def die(message: str) -> None:
    """One line on stderr and exit code 2: bad input is the user's to fix, not a crash."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def number(text: str):
    """An int (a count of batches) or a float (a fraction of them), as the Trainer accepts."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def positive_int(text: str) -> int:
    """A flag type: a whole number, at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def base_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the Description line of the benchmark's docstring (its second
    line) and whose --help shows the defaults."""
    return argparse.ArgumentParser(description=doc.strip().splitlines()[1],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def benchmark_parser(doc: str, quick: dict, full: dict, data_dir: bool = True) -> argparse.ArgumentParser:
    """The flags the training benchmarks share, first in their --help; each benchmark adds its own."""
    parser = base_parser(doc)
    if data_dir:
        parser.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                            help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    parser.add_argument("--output_dir", "--output-dir", default="outputs/benchmarks", help="where the CSV and table go")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run that proves the benchmark works: {quick}; full mode is {full}")
    return parser


def add_recipe_flags(parser: argparse.ArgumentParser, lr_help: str) -> None:
    """The training recipe of the scripts, last in --help: batch 128, lr 0.01, seed 42, 5000 held out."""
    parser.add_argument("--batch_size", "--batch-size", type=int, default=128, metavar="N")
    parser.add_argument("--lr", type=float, default=0.01, help=lr_help)
    parser.add_argument("--seed", type=int, default=42, help="seeds weights, split and shuffling")
    parser.add_argument("--val_size", "--val-size", type=int, default=5000, help="training images held out")


def add_compile_flag(parser: argparse.ArgumentParser, rows: str) -> None:
    parser.add_argument("--compile_mode", "--compile-mode", type=compile_mode, default="default",
                        help=f"torch.compile mode of the {rows}: {', '.join(COMPILE_MODES)} (reduce-overhead needs a CUDA GPU)")


def compile_mode(text: str) -> str:
    if text not in COMPILE_MODES:
        die(f"--compile_mode: unknown {text}; choose from {', '.join(COMPILE_MODES)}")
    return text


def whole_numbers(flag: str, text: str, example: str) -> list:
    """A flag's comma-separated whole numbers, such as 2,3; anything else exits with one line."""
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        die(f"--{flag} takes whole numbers separated by commas, such as {example}; got {text}")


def fill_mode_defaults(args, quick: dict, full: dict) -> None:
    """Flags the user left unset take the value of the mode: --quick or full."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


# %% Devices
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


def lightning_accelerator(device: torch.device) -> str:
    """The Trainer's name for a torch device."""
    return {"cuda": "gpu"}.get(device.type, device.type)


def synchronized_time(device: torch.device) -> float:
    """perf_counter once the device has finished its queued work (GPU kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def check_compile(mode: str, device: torch.device) -> None:
    """What the script's --compile checks before training: CUDA graphs need a GPU, inductor on a
    CPU a C++ compiler (the compiled runs would otherwise fail one by one with a traceback)."""
    if mode == "reduce-overhead" and device.type != "cuda":
        die(f"--compile_mode reduce-overhead replays CUDA graphs, which need a CUDA GPU (this is {device.type}); "
            f"use default or max-autotune-no-cudagraphs")
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler
        try:
            get_cpp_compiler()  # what inductor runs first: $CXX (else g++) --version
        except Exception:
            die(f"the compiled runs need a C++ compiler and {os.environ.get('CXX', 'g++')} does not run; "
                f"install g++ (or set CXX to one), or leave out the compiled runs")


def cold_compile_env(run_dir: Path) -> dict:
    """The environment for a compiled run: torch.compile's on-disk caches in run_dir, which launch
    empties first, so every run pays the compile a user's first run pays (later runs on one machine
    reuse the caches and pay less)."""
    return dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(run_dir / "inductor_cache"),
                TRITON_CACHE_DIR=str(run_dir / "triton_cache"))


def compile_seconds() -> float:
    """Seconds this process spent compiling with torch.compile (Dynamo tracing plus Inductor's
    code generation, every graph and recompile), as torch itself records them."""
    from torch._dynamo.utils import compilation_time_metrics
    return sum(compilation_time_metrics.get("_compile.compile_inner", []))


# %% Data
def prepare_run(args, subfolder: str = "") -> tuple:
    """Before a training benchmark starts: MNIST is there, the split leaves training images, the
    device exists, and the output folder (or its subfolder) is made. Returns (device, output folder)."""
    prepare_mnist(args.data_dir)
    check_val_size(args.data_dir, args.val_size)
    device = torch_device(args.accelerator)
    out = Path(args.output_dir)
    (out / subfolder).mkdir(parents=True, exist_ok=True)
    return device, out


def prepare_mnist(data_dir: str) -> None:
    """Download MNIST into data_dir/MNIST/raw unless it is there; exit with a fix-it line if not."""
    from torchvision.datasets import MNIST  # here, not at the top: see the module docstring
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
    from torchvision.datasets import MNIST
    train_images = len(MNIST(data_dir, train=True, download=False))
    if val_size >= train_images:
        die(f"--val_size {val_size} leaves no training images: {data_dir} holds {train_images}; "
            f"pass a smaller --val_size")


def mnist_tensors(data_dir: str, train: bool = True) -> TensorDataset:
    """The whole split as normalized tensors, decoded once (as the scripts do)."""
    from torchvision.datasets import MNIST
    dataset = MNIST(data_dir, train=train, download=False)
    images = dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD).unsqueeze(1)
    return TensorDataset(images, dataset.targets)


def seeded_split(dataset, val_size: int, seed: int) -> list:
    """The scripts' split, 55000/5000 by default, with a seeded generator: [train, valid]."""
    generator = torch.Generator().manual_seed(seed)
    return random_split(dataset, [len(dataset) - val_size, val_size], generator=generator)


def batch_count(available: int, limit) -> int:
    """How many batches a limit_*_batches value means, as the Trainer counts them."""
    return min(available, limit) if isinstance(limit, int) else int(available * limit)


# %% Model
# The script's network, layer for layer (the same seed gives the same weights; parity.py's matching losses
# prove it). A copy, not an import, because importing the script would load Lightning, pandas and matplotlib.
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


# %% The machine
def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or what platform knows where there is none."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    return cpu


def installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def environment_line(device: torch.device = None, threads: int = None,
                     packages: tuple = ("pytorch-lightning", "torchmetrics")) -> str:
    """One line: the CPU, cores, load average and versions; with a device, also the device, the
    torch threads (torch's current count unless given) and the running torch's own version."""
    machine = f"{cpu_name()}, {os.cpu_count()} logical cores"
    versions = [f"{package} {installed(package)}" for package in packages]
    if device is not None:
        machine += (f", device {device_name(device)}, "
                    f"torch threads {torch.get_num_threads() if threads is None else threads}")
        versions.insert(0, f"torch {torch.__version__}")
    return (f"Machine: {machine}; load average {os.getloadavg()[0]:.2f}. "
            f"Python {platform.python_version()}, {', '.join(versions)}.")


# %% Report
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


def write_report(out: Path, name: str, title: str, tables: str, notes: str, rows: list, argv, started: float,
                 print_seconds: bool = True) -> None:
    """Print the tables and notes, write <name>.csv (the rows) and <name>.md (the tables, the notes,
    the command and the benchmark's wall time since `started`), and say where they went."""
    command = f"python benchmarks/{name}.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("\n" + tables + "\n\n" + notes)
    write_csv(out / f"{name}.csv", rows)
    (out / f"{name}.md").write_text(
        f"### {title}\n\n{tables}\n\n{notes}\nCommand: `{command.strip()}`; "
        f"benchmark wall {time.perf_counter() - started:.0f} s.\n")
    seconds = f" ({time.perf_counter() - started:.0f} s)" if print_seconds else ""
    print(f"\nwrote {out / f'{name}.csv'} and {out / f'{name}.md'}{seconds}")
