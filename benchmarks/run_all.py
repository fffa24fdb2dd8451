"""
Title: Run every benchmark with one command
Description: Run the benchmarks, print their Markdown tables with the machine, and collect the CSVs.

What it runs (each in its own process, in this order; --only picks some)
    parity           Lightning against a plain PyTorch loop: s/epoch, ratio, memory, losses
    step_overhead    where Lightning's per-step time goes: the loop, a metric call, each self.log
    time_to_99       wall time to 99% test accuracy: the Basic script and the same plain loop
    data_pipeline    per-sample transforms with 0 / 2 workers against tensors preloaded once
    quantization     the quantization scripts' table: accuracy, size, latency (written by
                     benchmarks/quantization.py; CPU only, so --accelerator is not passed on)
    test_suite_cost  how long pytest takes, with and without real MNIST; it runs the whole test
                     suite twice, so only with --test_suite
    Then it prints one Markdown report: the machine, thread counts and versions, the load
    average before and after (a busy machine makes every timing slower and noisier), each
    benchmark's tables, and how long each took.

How to run
    python benchmarks/run_all.py --data_dir /path/to/datasets           # full: the README numbers, ~20 min
    python benchmarks/run_all.py --data_dir /path/to/datasets --quick    # ~1.5 min, plus quantization's ~3
    python benchmarks/run_all.py --accelerator gpu                    # the same on a GPU
    python benchmarks/run_all.py --only parity,data_pipeline --test_suite

What it writes (under --output_dir, default outputs/benchmarks)
    <benchmark>.csv, <benchmark>.md   each benchmark's table (written by the benchmark itself)
    run_all.csv                       each benchmark's status and wall time
    summary.md                        the whole report, ready to paste into a README
"""

# %% Imports
import argparse
import csv
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import base_parser, cpu_name, die, installed, prepare_mnist

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("parity", "step_overhead", "time_to_99", "data_pipeline", "quantization", "test_suite_cost")
NEEDS_MNIST = ("parity", "time_to_99", "data_pipeline", "quantization", "test_suite_cost")  # take --data_dir
ON_THE_DEVICE = ("parity", "step_overhead", "time_to_99", "data_pipeline")  # take --accelerator
SPLITS_MNIST = ("parity", "time_to_99", "data_pipeline")  # take --val_size
PACKAGES = ("torch", "torchvision", "pytorch-lightning", "torchmetrics", "torchao", "onnxruntime")


# %% Measurement
def run_benchmark(name: str, args, out: Path) -> dict:
    """Run one benchmark, its output streamed to the console as it comes; return its report."""
    script = HERE / f"{name}.py"
    if not script.is_file():
        return {"benchmark": name, "status": f"skipped: {script.name} not found", "wall s": "", "report": ""}
    command = [sys.executable, str(script), "--output_dir", str(out)]
    if name == "quantization":  # it keeps its runs in a folder of their own and names its CSV apart
        command[-1:] = [str((out / "quantization").resolve()), "--results", str((out / "quantization.csv").resolve())]
    if name in NEEDS_MNIST:
        command += ["--data_dir", args.data_dir]
    if name in ON_THE_DEVICE:
        command += ["--accelerator", args.accelerator]
    if name in SPLITS_MNIST:
        command += ["--val_size", str(args.val_size)]
    if args.quick:
        command.append("--quick")
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    report_file = out / f"{name}.md"
    report_file.unlink(missing_ok=True)  # an old report must not pass for this run's
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        printed = []
        for line in process.stdout:
            print(line, end="", flush=True)
            printed.append(line)
    wall = time.perf_counter() - started
    if report_file.is_file():
        report = report_file.read_text()
    else:  # a benchmark that writes no .md: keep its printed report, from its command or first table on
        start = next((i for i, line in enumerate(printed) if line.startswith(("|", "Command:"))), len(printed))
        report = f"### {name}\n\n" + "".join(printed[start:])
    status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
    if process.returncode != 0 and not report_file.is_file():
        report += "\n```text\n" + "".join(printed[-10:]) + "```\n"
    return {"benchmark": name, "status": status, "wall s": round(wall), "report": report}


def environment(accelerator: str) -> list:
    """The lines that say what the numbers were measured on."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible to torch"
    return [
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.system()} {platform.release()}",
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()}); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        f"- GPU: {gpu}; --accelerator {accelerator}",
        f"- Python {platform.python_version()}; " + ", ".join(f"{p} {installed(p)}" for p in PACKAGES),
    ]


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_mnist(args.data_dir)  # once here, rather than have every benchmark fail on it in turn
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    header = environment(args.accelerator)
    header.append(f"- Load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"run_all ({mode} mode): {', '.join(args.only)}\n" + "\n".join(header), flush=True)

    started = time.perf_counter()
    results = [run_benchmark(name, args, out) for name in args.only]
    total = time.perf_counter() - started
    header.append(f"- Load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    command = "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    timing = "\n".join(f"| {r['benchmark']} | {r['status']} | {r['wall s']} |" for r in results)
    summary = (f"## Benchmarks ({mode} mode)\n\nCommand: `{command.strip()}`; total {total:.0f} s.\n\n"
               + "\n".join(header) + "\n\n" + "\n\n".join(r["report"].strip() for r in results if r["report"])
               + f"\n\n| benchmark | status | wall s |\n|---|---|---|\n{timing}\n")
    (out / "summary.md").write_text(summary)
    with open(out / "run_all.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["benchmark", "status", "wall s"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    print("\n" + "=" * 80 + "\n" + summary + f"\nwrote {out / 'summary.md'} and {out / 'run_all.csv'}")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results) else 1


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                        help="folder holding MNIST/raw; $PATH_DATASETS sets the default")
    parser.add_argument("--output_dir", "--output-dir", default="outputs/benchmarks", help="where CSVs and tables go")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto (for the training benchmarks)")
    parser.add_argument("--quick", action="store_true", help="each benchmark's short mode: proves they work")
    parser.add_argument("--val_size", "--val-size", type=int, default=5000,
                        help="training images held out for validation (training benchmarks)")
    parser.add_argument("--only", metavar="NAME[,NAME...]",
                        help=f"run only these, comma-separated, from {', '.join(BENCHMARKS)}")
    parser.add_argument("--test_suite", "--test-suite", action="store_true",
                        help="also time the test suite (runs pytest twice: several minutes)")
    args = parser.parse_args(argv)

    if args.only:
        args.only = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in args.only if name not in BENCHMARKS]
        if unknown or not args.only:
            die(f"--only: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(BENCHMARKS)}")
        if args.test_suite and "test_suite_cost" not in args.only:
            args.only.append("test_suite_cost")
    else:
        args.only = [name for name in BENCHMARKS if name != "test_suite_cost" or args.test_suite]
    return args


if __name__ == "__main__":
    sys.exit(main())
