"""
Title: Quantization: what int8 costs in accuracy and gains in size and speed, path by path
Description: Run every int8 path of the quantization scripts from one float model; compare them.

What it measures
    Every int8 path of the repository, each run in a fresh process as a user would run it:
      ptq             quant_lightning_ptq.py                    trains the float model, then PTQ, eager (x86)
      ptq_onednn      quant_lightning_ptq.py --backend onednn   PTQ of that float model, oneDNN engine
      ptq_pt2e        quant_lightning_ptq.py --flow pt2e        PTQ through torch.export + torchao
      qat             quant_lightning_qat.py                    QAT fine-tuning of that float model, eager
      qat_pt2e        quant_lightning_qat.py --flow pt2e        the same through torchao's PT2E QAT
      callback        quant_with_only_lightning.py              QAT by the QuantizationAwareTraining callback
      callback_pt2e   quant_with_only_lightning.py --flow pt2e  the callback's PT2E mode
    Every path after the first starts from the first one's best checkpoint (--ckpt), so all rows
    share one float model and one fp32 accuracy. Each saved int8 model is then reloaded by another
    fresh process (--load_int8) and tested again.
    Reported per path: the float and the int8 test accuracy, the drop in points, the accuracy of
    the reloaded file, the file sizes, and the median milliseconds per forward at batch 1 and 256
    of three models: the float network as it is (eager), the float network compiled by
    torch.compile the same way as the PT2E int8 models (freezing, one graph per batch size), and
    the int8 model; then the int8 speed-up over each. The speed-up over the compiled float model is
    what int8 adds over compiling alone. Timing runs on the CPU with --threads threads; the float
    and the int8 models take turns, after 3 warm-up forwards. int8 speed depends on the CPU's int8
    instructions (AVX2, AVX-512 VNNI, AMX): the report names the CPU and the flags it has, and
    another CPU gives other numbers.

How to run
    python benchmarks/quantization.py --data_dir /path/to/datasets                  # full: 3 float epochs, 2 QAT epochs
    python benchmarks/quantization.py --data_dir /path/to/datasets --quick          # a quarter epoch each: proves it works
    python benchmarks/quantization.py --data_dir /path/to/datasets --methods ptq,ptq_pt2e --threads 4

What it writes
    quantization.csv   (--results, default outputs/benchmarks/quantization.csv) one row per path
    quantization.md    beside it: the tables as printed, the notes, the machine and the command
    quantization/      (--output_dir) each path's output folder and each run's console log (*.log)
"""

# %% Imports
import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from common import (base_parser, check_val_size, die, environment_line, markdown_table, positive_int, prepare_mnist,
                    write_csv)

ROOT = Path(__file__).resolve().parent.parent
PTQ, QAT, CALLBACK = "quant_lightning_ptq.py", "quant_lightning_qat.py", "quant_with_only_lightning.py"
METHODS = {  # name: the script, and its flags beyond the shared ones
    "ptq": (PTQ, []),
    "ptq_onednn": (PTQ, ["--backend", "onednn"]),
    "ptq_pt2e": (PTQ, ["--flow", "pt2e"]),
    "qat": (QAT, []),
    "qat_pt2e": (QAT, ["--flow", "pt2e"]),
    "callback": (CALLBACK, []),
    "callback_pt2e": (CALLBACK, ["--flow", "pt2e"]),
}
# The first method trains the float model that every other one starts from.
FULL = dict(train=["--epochs", "3"], qat=["--qat_epochs", "2"], calibration_batches=32, latency_repeats=50)
QUICK = dict(train=["--epochs", "1", "--limit_train_batches", "0.25"],
             qat=["--qat_epochs", "1", "--limit_train_batches", "0.25"], calibration_batches=8, latency_repeats=10)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_int8")  # what decides int8 speed on x86


# %% Runs
def run(name: str, command: list, out: Path) -> str:
    """Run one script in a fresh process from the repository root; its console output goes to
    <out>/<name>.log. A failed run stops the benchmark with one line naming its log."""
    log = out / f"{name}.log"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, capture_output=True, text=True)
    output = result.stdout + result.stderr
    log.write_text(output)
    print(f"  {name:<22s} {time.perf_counter() - started:6.0f} s", flush=True)
    if result.returncode != 0:
        print("\n".join(output.strip().splitlines()[-15:]))
        die(f"{name} failed (exit {result.returncode}); its whole output is in {log} (last lines above)")
    return output


def run_method(name: str, args, out: Path) -> dict:
    """One int8 path: its script's results row, plus the accuracy of its saved model reloaded."""
    script, flags = METHODS[name]
    mode = QUICK if args.quick else FULL
    flags = [*flags, *(mode["train"] if name == "ptq" else ["--ckpt", out / "ptq" / "checkpoints" / "best.ckpt"])]
    # PTQ calibrates on a few batches; QAT fine-tunes instead.
    flags += ["--calibration_batches", mode["calibration_batches"]] if script == PTQ else mode["qat"]
    run(name, [script, "--output_dir", out / name, "--data_dir", args.data_dir, "--val_size", args.val_size,
               "--threads", args.threads, "--latency_repeats", args.latency_repeats, *flags], out)
    row = pd.read_csv(out / name / "quant_results.csv").iloc[-1].to_dict()  # the row this run added
    int8_file = out / name / ("mnist_int8.pt2" if "--flow" in flags else "mnist_int8.pt")
    reloaded = run(f"{name}_reload", [script, "--load_int8", int8_file, "--data_dir", args.data_dir], out)
    return {"path": name, **row, "reload_acc": printed_accuracy(reloaded)}


def printed_accuracy(output: str) -> float:
    match = re.search(r"^int8 accuracy, Trainer\.test:\s*([0-9.]+)", output, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


# %% Report
def accuracy_and_size(rows: list) -> list:
    return [{"path": row["path"], "method": row["method"], "backend": row["backend"],
             "fp32 acc": f"{row['fp32_acc']:.4f}", "int8 acc": f"{row['int8_acc']:.4f}",
             "drop (pts)": f"{100 * (row['fp32_acc'] - row['int8_acc']):+.2f}",
             "reloaded acc": f"{row['reload_acc']:.4f}", "fp32 KiB": f"{row['fp32_kb']:.0f}",
             "int8 KiB": f"{row['int8_kb']:.0f}", "int8 / fp32 size": f"{row['size_ratio']:.3f}"} for row in rows]


def latency(rows: list) -> list:
    table = []
    for row in rows:
        cells = {"path": row["path"]}
        for batch in (1, 256):
            digits = 3 if batch == 1 else 1
            for key, label in (("fp32_ms", "fp32"), ("fp32_compiled_ms", "fp32 compiled"), ("int8_ms", "int8")):
                cells[f"b{batch} {label} ms"] = number(row.get(f"{key}_b{batch}"), f"{{:.{digits}f}}")
            cells[f"b{batch} int8 x fp32"] = number(row.get(f"speedup_b{batch}"), "{:.2f}x")
            cells[f"b{batch} int8 x compiled"] = number(row.get(f"speedup_compiled_b{batch}"), "{:.2f}x")
        table.append(cells)
    return table


def number(value, form: str) -> str:
    return "n/a" if value is None or pd.isna(value) else form.format(value)


def int8_cpu_flags() -> str:
    """Which of the x86 instruction sets that int8 kernels use this CPU has, from /proc/cpuinfo."""
    if not Path("/proc/cpuinfo").exists():
        return "not readable here"
    found = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    present = [flag for flag in CPU_FLAGS if found and flag in found.group(1).split()]
    return ", ".join(present) or f"none of {', '.join(CPU_FLAGS)}"


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_mnist(args.data_dir)
    check_val_size(args.data_dir, args.val_size)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"quantization: {len(args.methods)} int8 paths and their reloads, logs in {out}")
    rows = [run_method(name, args, out) for name in args.methods]

    tables = (f"Accuracy and size:\n\n{markdown_table(accuracy_and_size(rows))}\n\n"
              f"Latency, ms per forward on the CPU with {args.threads} thread{'s' if args.threads > 1 else ''} "
              f"(median of {args.latency_repeats}):\n\n"
              f"{markdown_table(latency(rows))}")
    notes = ("drop: fp32 minus int8 accuracy, in points; reloaded: the saved int8 file tested again by a fresh "
             "process. fp32 = the float network in eval mode under torch.inference_mode; fp32 compiled = the same "
             "network through torch.compile with freezing, as the PT2E int8 models are; int8 x fp32 / x compiled = "
             "the int8 model's speed-up over each.\n"
             f"{environment_line(packages=('torch', 'pytorch-lightning', 'torchao'))}\n"
             f"The CPU's int8 instructions ({int8_cpu_flags()}) decide the int8 speed-ups: another CPU gives "
             f"other numbers.\n")
    print("\n" + tables + "\n\n" + notes)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    write_csv(results, rows)
    command = "python benchmarks/quantization.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results.with_suffix(".md").write_text(
        f"### Quantization\n\n{tables}\n\n{notes}\nCommand: `{command.strip()}`; "
        f"benchmark wall {time.perf_counter() - started:.0f} s.\n")
    print(f"\nwrote {results} and {results.with_suffix('.md')} ({time.perf_counter() - started:.0f} s)")
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.error = die  # every bad flag value: one line, exit 2
    parser.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                        help="folder holding MNIST/raw (downloaded when missing); $PATH_DATASETS sets the default")
    parser.add_argument("--output_dir", "--output-dir", default="outputs/benchmarks/quantization",
                        help="one folder per path, and each run's log")
    parser.add_argument("--results", default="outputs/benchmarks/quantization.csv", type=csv_file,
                        help="the gathered table (.csv; its .md goes beside it)")
    parser.add_argument("--quick", action="store_true",
                        help=f"short training, fewer calibration batches and timings: {QUICK}; full mode is {FULL}")
    parser.add_argument("--methods", type=methods, default=",".join(METHODS), metavar="NAME[,NAME...]",
                        help=f"which int8 paths, comma-separated, from {', '.join(METHODS)}; ptq comes first")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads for the timing")
    parser.add_argument("--latency_repeats", "--latency-repeats", type=positive_int, metavar="N",
                        help="timed forwards per model and batch size (default: by mode)")
    parser.add_argument("--val_size", "--val-size", type=positive_int, default=5000,
                        help="training images held out for validation by every script")
    args = parser.parse_args(argv)
    args.latency_repeats = args.latency_repeats or (QUICK if args.quick else FULL)["latency_repeats"]
    return args


def methods(text: str) -> list:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(METHODS)}")
    if names[0] != "ptq":
        raise argparse.ArgumentTypeError("must start with ptq: it trains the float model every other path starts from")
    return list(dict.fromkeys(names))


def csv_file(text: str) -> str:
    if not text.endswith(".csv"):
        raise argparse.ArgumentTypeError(f"must name a .csv file (its .md goes beside it), got {text}")
    return text


if __name__ == "__main__":
    sys.exit(main())
