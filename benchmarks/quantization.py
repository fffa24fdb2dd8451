"""Quantization benchmark: every int8 path of the repository on real MNIST, gathered into one table.

Each step runs a script in a fresh process, as a user would:
    1. quant_lightning_ptq.py                     trains the float model, then PTQ (eager, x86)
    2. quant_lightning_ptq.py --backend onednn    PTQ of the same checkpoint with the oneDNN engine
    3. quant_lightning_ptq.py --flow pt2e         PTQ of the same checkpoint: torch.export + torchao + compile
    4. quant_lightning_qat.py --ckpt              QAT fine-tuning of the same checkpoint (eager, x86)
    5. quant_with_only_lightning.py --ckpt        the same with the QuantizationAwareTraining callback
then reloads every saved int8 model in another fresh process (--load_int8) and checks its accuracy.
All rows share one float model, so their fp32 accuracy is the same number.

It reads the row each script appended to its quant_results.csv, adds the reload accuracy, writes one
CSV (default outputs/benchmarks/quantization.csv) and, next to it, a Markdown report (.md) that it also
prints: the command, the machine, the thread count and the library versions, a table for the README,
and which targets were met.

    python benchmarks/quantization.py --data_dir ../shared/data           # ~8 min, 2 cores
    python benchmarks/quantization.py --data_dir ../shared/data --quick   # ~3 min smoke run
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from common import cpu_name, installed

ROOT = Path(__file__).resolve().parent.parent
# Targets of the quantization issue: size ratio, speedups, and accuracy drop in points per method.
MAX_SIZE_RATIO, MIN_SPEEDUP_B256, MIN_SPEEDUP_B1 = 0.26, 5.0, 1.8
MAX_DROP_POINTS = {"PTQ": 0.3, "QAT": 0.15}


def run(name: str, command: list, log_dir: Path) -> str:
    """Run one script in a fresh process; its whole output goes to <log_dir>/<name>.log."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, capture_output=True, text=True)
    output = result.stdout + result.stderr
    (log_dir / f"{name}.log").write_text(output)
    print(f"  {name:<22s} {time.perf_counter() - start:6.0f} s", flush=True)
    if result.returncode != 0:
        sys.exit(f"{name} failed (exit {result.returncode}); the end of its output:\n{output[-3000:]}")
    return output


def reload_accuracy(output: str) -> float:
    match = re.search(r"^test accuracy:\s*([0-9.]+)", output, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def machine() -> str:
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = set(re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.MULTILINE).group(1).split())
        flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in found)
    versions = ", ".join(f"{package} {installed(package)}" for package in ("torch", "pytorch-lightning", "torchao"))
    return (f"{cpu_name()} ({os.cpu_count()} cores; {flags or 'no x86 flags read'}), no GPU used; "
            f"Python {platform.python_version()}, {versions}")


def markdown(table: pd.DataFrame) -> str:
    columns = {"method": "method", "backend": "backend", "fp32_acc": "fp32 acc", "int8_acc": "int8 acc",
               "drop_points": "drop (pts)", "reload_acc": "reloaded", "fp32_kb": "fp32 KiB", "int8_kb": "int8 KiB",
               "size_ratio": "size int8/fp32", "fp32_ms_b1": "fp32 ms b1", "int8_ms_b1": "int8 ms b1",
               "speedup_b1": "speedup b1", "fp32_ms_b256": "fp32 ms b256", "int8_ms_b256": "int8 ms b256",
               "speedup_b256": "speedup b256"}
    formats = {"fp32_acc": "{:.4f}", "int8_acc": "{:.4f}", "reload_acc": "{:.4f}", "drop_points": "{:+.2f}",
               "fp32_kb": "{:.0f}", "int8_kb": "{:.0f}", "size_ratio": "{:.3f}", "fp32_ms_b1": "{:.3f}",
               "int8_ms_b1": "{:.3f}", "speedup_b1": "{:.2f}x", "fp32_ms_b256": "{:.1f}",
               "int8_ms_b256": "{:.1f}", "speedup_b256": "{:.2f}x"}
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = [formats.get(key, "{}").format(row[key]) for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(table: pd.DataFrame) -> str:
    lines = []
    for _, row in table.iterrows():
        max_drop = MAX_DROP_POINTS[row["method"].split()[0]]
        checks = [(f"size <= {MAX_SIZE_RATIO}", row["size_ratio"] <= MAX_SIZE_RATIO),
                  (f"b256 >= {MIN_SPEEDUP_B256}x", row["speedup_b256"] >= MIN_SPEEDUP_B256),
                  (f"b1 >= {MIN_SPEEDUP_B1}x", row["speedup_b1"] >= MIN_SPEEDUP_B1),
                  (f"drop <= {max_drop}", row["drop_points"] <= max_drop),
                  ("reload = int8", round(row["int8_acc"], 4) == row["reload_acc"])]  # printed to 4 places
        marks = ", ".join(f"{label} {'met' if ok else 'MISSED'}" for label, ok in checks)
        lines.append(f"- {row['method']} ({row['backend']}): {marks}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                        help="folder holding the real MNIST/raw")
    parser.add_argument("--output_dir", "--output-dir", default="outputs/benchmarks/quantization",
                        help="one sub-folder per run, and each run's log")
    parser.add_argument("--results", default="outputs/benchmarks/quantization.csv", help="the gathered table")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for the latency timing")
    parser.add_argument("--quick", action="store_true",
                        help="1 float epoch on a quarter of the data, 1 QAT epoch, fewer timing repeats")
    args = parser.parse_args(argv)
    if not Path(args.data_dir, "MNIST", "raw").is_dir():
        sys.exit(f"error: no MNIST/raw under {args.data_dir}; pass --data_dir (the real MNIST, e.g. ../shared/data)")

    out = (ROOT / args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = ["--data_dir", Path(args.data_dir).resolve()]
    repeats = 10 if args.quick else 50
    timing = ["--threads", args.threads, "--latency_repeats", repeats]
    calibration = ["--calibration_batches", 8 if args.quick else 32]
    if args.quick:
        train = ["--epochs", "1", "--limit_train_batches", "0.25"]
        qat = ["--qat_epochs", "1", "--limit_train_batches", "0.25"]
    else:
        train, qat = ["--epochs", "3"], ["--qat_epochs", "2"]
    ckpt = out / "ptq" / "checkpoints" / "best.ckpt"
    steps = [  # name, script, flags, the int8 file it saves
        ("ptq", "quant_lightning_ptq.py", [*train, *calibration], "mnist_int8.pt"),
        ("ptq_onednn", "quant_lightning_ptq.py", ["--ckpt", ckpt, "--backend", "onednn", *calibration],
         "mnist_int8.pt"),
        ("ptq_pt2e", "quant_lightning_ptq.py", ["--ckpt", ckpt, "--flow", "pt2e", *calibration], "mnist_int8.pt2"),
        ("qat", "quant_lightning_qat.py", ["--ckpt", ckpt, *qat], "mnist_int8.pt"),
        ("callback", "quant_with_only_lightning.py", ["--ckpt", ckpt, *qat], "mnist_int8.pt"),
    ]
    started = time.perf_counter()
    print(f"running {len(steps)} quantization runs and their reloads (logs in {out}):")
    rows = []
    for name, script, flags, int8_file in steps:
        run(name, [script, "--output_dir", out / name, *data, *timing, *flags], out)
        row = pd.read_csv(out / name / "quant_results.csv").iloc[-1].to_dict()
        reload = run(f"{name}_reload", [script, "--load_int8", out / name / int8_file, *data], out)
        row["reload_acc"] = reload_accuracy(reload)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["drop_points"] = 100 * (table["fp32_acc"] - table["int8_acc"])
    results = (ROOT / args.results).resolve()
    results.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(results, index=False)

    command = "python benchmarks/quantization.py --data_dir " + args.data_dir + (" --quick" if args.quick else "")
    report = (f"Command: `{command}`  \nMachine: {machine()}  \n"
              f"Latency: median of {repeats} timed forwards after 3 warm-up ones, torch.set_num_threads("
              f"{args.threads}), batch 1 and batch 256 test images, the float and the int8 model taking turns; "
              f"fp32 = the float network in eval mode under torch.inference_mode.\n\n"
              f"{markdown(table)}\n\nTargets:\n{targets(table)}\n")
    results.with_suffix(".md").write_text(report)
    print(f"\nfinished in {(time.perf_counter() - started) / 60:.1f} min; table written to {results} "
          f"and {results.with_suffix('.md')}\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
