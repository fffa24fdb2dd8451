"""
Title: Test suite cost: how long pytest takes, by default and with real MNIST
Description: Time the repository's pytest run with synthetic data only, then with real MNIST as well.

What it measures
    default   `python -m pytest` as the README tells a contributor to run it: PATH_DATASETS unset,
              so every test trains on the small synthetic MNIST of tests/conftest.py and the
              real-data tests skip
    real      the same with PATH_DATASETS pointing at real MNIST (--data_dir), as CI does when
              the data sits beside the checkout: the real-data tests run too
    Reported: the wall time of each run (interpreter start to exit), pytest's own time, and the
    counts of passed, skipped and failed tests. Each run is one process that uses whatever
    pytest.ini configures (workers included); --pytest_args adds to it.

How to run
    python benchmarks/test_suite_cost.py --data_dir /path/to/datasets          # both modes
    python benchmarks/test_suite_cost.py --quick                                  # the default mode only
    python benchmarks/test_suite_cost.py --pytest_args "-n 2"                     # two xdist workers

What it writes (under --output_dir, default outputs/benchmarks)
    test_suite_cost.csv    one row per mode
    test_suite_cost.md     the Markdown table as printed, with the machine it ran on
    test_suite_cost_*.log  pytest's full output for each mode
"""

# %% Imports
import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import base_parser, die, environment_line, markdown_table, write_report

ROOT = Path(__file__).resolve().parent.parent
MODES = ("default", "real")
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# %% Measurement
def run_pytest(args, mode: str, out: Path) -> dict:
    """One pytest process in the repository root; its wall time, and the counts from its summary."""
    env = {k: v for k, v in os.environ.items() if k != "PATH_DATASETS"}
    if mode == "real":
        env["PATH_DATASETS"] = str(Path(args.data_dir).resolve())
    command = [sys.executable, "-m", "pytest", *args.pytest_args]
    log = out / f"test_suite_cost_{mode}.log"
    started = time.perf_counter()
    try:
        with open(log, "w") as console:
            finished = subprocess.run(command, cwd=ROOT, env=env, stdout=console, stderr=subprocess.STDOUT,
                                      timeout=args.timeout)
    except subprocess.TimeoutExpired:
        die(f"pytest ({mode}) ran past --timeout {args.timeout} s; raise it, see {log}")
    wall = time.perf_counter() - started
    lines = log.read_text().strip().splitlines()
    summary = lines[-1] if lines else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|skipped|failed|errors?|xfailed|xpassed)", summary)}
    pytest_time = re.search(r" in ([0-9.]+)s", summary)
    return {"mode": mode, "PATH_DATASETS": env.get("PATH_DATASETS", "(unset)"), "wall s": round(wall, 1),
            "pytest s": float(pytest_time.group(1)) if pytest_time else "",
            "passed": counts.get("passed", 0), "skipped": counts.get("skipped", 0),
            "failed": counts.get("failed", 0) + counts.get("errors", 0) + counts.get("error", 0),
            "exit code": finished.returncode}


# %% Main
def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"test suite cost: `pytest {shlex.join(args.pytest_args)}` in {ROOT}, modes: {', '.join(args.modes)}")
    started = time.perf_counter()
    rows = []
    for mode in args.modes:
        rows.append(run_pytest(args, mode, out))
        print(f"  {mode:8s} {rows[-1]['wall s']:.1f} s: {rows[-1]['passed']} passed, "
              f"{rows[-1]['skipped']} skipped, {rows[-1]['failed']} failed")

    table = markdown_table(rows)
    notes = environment_line(packages=("pytest", "torch", "pytorch-lightning"))
    write_report(out, "test_suite_cost", "Test suite cost", table, notes, rows, argv, started, print_seconds=False)
    failed = [row["mode"] for row in rows if row["exit code"] not in (0, 5)]  # 5: no tests collected
    if failed:
        print(f"pytest failed in mode {', '.join(failed)}: the times above are not a passing suite's; "
              f"see {out}/test_suite_cost_*.log", file=sys.stderr)
        return 1
    return 0


# %% Flags
def parse_args(argv=None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--data_dir", "--data-dir", default=os.environ.get("PATH_DATASETS", "data"),
                        help="folder holding MNIST/raw, for the real mode; $PATH_DATASETS sets the default")
    parser.add_argument("--output_dir", "--output-dir", default="outputs/benchmarks", help="where the CSV and table go")
    parser.add_argument("--quick", action="store_true", help="time the default mode only")
    parser.add_argument("--modes", help=f"which runs, comma-separated from {', '.join(MODES)} (default: by mode)")
    parser.add_argument("--pytest_args", "--pytest-args", default="", metavar="ARGS",
                        help='extra pytest arguments in one string, such as "-n 2" or "tests/test_basic.py"')
    parser.add_argument("--timeout", type=int, default=3600, metavar="S", help="give up on one pytest run after S seconds")
    args = parser.parse_args(argv)

    args.modes = [m.strip() for m in (args.modes or ("default" if args.quick else ",".join(MODES))).split(",")
                  if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        die(f"--modes: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODES)}")
    args.pytest_args = shlex.split(args.pytest_args)
    if "real" in args.modes and not all(Path(args.data_dir, "MNIST", "raw", name).is_file() for name in RAW_FILES):
        die(f"the real mode needs MNIST in {Path(args.data_dir, 'MNIST', 'raw')}; point --data_dir or "
            f"PATH_DATASETS at a folder that holds MNIST/raw, or pass --modes default")
    return args


if __name__ == "__main__":
    sys.exit(main())
