"""Each page's shell commands, run the way a reader runs them: every ```bash block of the page, top
to bottom, in one shell, in one folder that holds a copy of the scripts (a fresh clone), so that a
command meets the files the commands above it left behind.

What differs from a reader's run, and why:
- the data: /path/to/datasets and PATH_DATASETS name the synthetic MNIST of conftest.py;
- the length: each script's commands get the flags of TINY appended (argparse and LightningCLI keep
  the last value of a flag, so they override the page's), and the wait loop of the resume recipe polls every 0.1 s
  instead of every second (the tiny epochs are shorter than a second);
- the commands of SKIPPED do not run here, each for the reason given;
- without a GPU, `--accelerator gpu` must stop with exit code 2, as the page says.
Every other line must exit with code 0, or with the code EXPECTED_EXIT gives it.
(The Japanese twins hold the same code blocks: tests/test_readme.py checks that.)
"""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, script_env
from test_readme import ENGLISH, code_blocks

TRAIN = "--batch_size 64 --val_size 500 --limit_train_batches 8 --limit_val_batches 2 --limit_test_batches 2"
TINY = {
    "Basic_usage_of_lightning.py": f"--epochs 1 {TRAIN}",
    "callbacks_lightning.py": f"--epochs 1 {TRAIN}",
    "loggers_lightning.py": f"--epochs 1 {TRAIN}",
    # The page's own epoch counts stay: the resume recipe kills a 5-epoch run after its first epoch.
    "check_point_save.py": "--batch_size 64 --val_size 500 --limit_train_batches 10",
    "check_point_load.py": "--limit_test_batches 2",
    "quant_lightning_ptq.py": f"--epochs 1 {TRAIN} --calibration_batches 2 --latency_repeats 0",
    "quant_lightning_qat.py": f"--epochs 1 {TRAIN} --qat_epochs 1 --latency_repeats 0",
    "quant_with_only_lightning.py": f"--epochs 1 {TRAIN} --qat_epochs 1 --latency_repeats 0",
    # LightningCLI keys; a later key wins, as a later flag does.
    "cli_lightning.py": "--trainer.max_epochs 1 --data.batch_size 64 --data.val_size 500 --trainer.limit_train_batches 8 "
                        "--trainer.limit_val_batches 2 --trainer.limit_test_batches 2",
}
SUBSTITUTED = {"sleep 1;": "sleep 0.1;"}
# (a pattern a command line matches, why it does not run here)
SKIPPED = [
    (r"^(\w+=\S+ )*pytest|&& pytest", "the test suite itself"),
    (r"^tensorboard ", "starts a server that runs until it is stopped"),
    (r"^torchrun |^srun |^#", "needs two machines or a SLURM cluster"),
    (r"benchmarks/", "a benchmark: tests/test_benchmarks.py runs the benchmarks in --quick mode"),
    (r"^pip install [^&]*$", "installs packages: the tests run in a venv that holds requirements-dev.txt"),
    (r"^jupyter lab ", "opens Jupyter, which runs until it is stopped (tests/test_notebooks.py runs the notebooks)"),
]
# Lines the page says fail, with the exit code it gives them.
EXPECTED_EXIT = {"--raise_at_step": 1}
if not __import__("torch").cuda.is_available():
    EXPECTED_EXIT["--accelerator gpu"] = 2  # "without one the script stops with one line that says so"
PIP_PREFIX = re.compile(r"^pip install -r \S+ && ")  # the venv the tests run in already holds requirements*.txt
PYTHON_COMMAND = re.compile(r"python (\S+\.py)((?:[ \t]+(?![#&|;])\S+)*)")


def shell_lines(page: str) -> list:
    """The commands of the page's bash blocks, in order: one per line, continuation lines joined,
    and a here-document (`python - <<'EOF'` ... `EOF`) kept whole as one command."""
    commands = []
    for block in code_blocks(page, "bash"):
        lines = iter(block.replace("\\\n", " ").splitlines())
        for line in lines:
            if here := re.search(r"<<-?'?(\w+)'?", line):
                line = "\n".join([line, *iter(lines.__next__, here.group(1))] + [here.group(1)])
            if line.strip():
                commands.append(line)
    return commands


def as_run_here(line: str, data_dir: Path):
    """(the line as the test runs it, or None when skipped, and why)."""
    for pattern, reason in SKIPPED:
        if re.search(pattern, line):
            return None, reason
    line = PIP_PREFIX.sub("", line).replace("/path/to/datasets", str(data_dir))
    for old, new in SUBSTITUTED.items():
        line = line.replace(old, new)
    return PYTHON_COMMAND.sub(lambda m: f"{m.group(0)} {tiny_flags(m.group(1), m.group(2))}".rstrip(), line), None


def tiny_flags(script: str, argv: str) -> str:
    """The catalogue scripts refuse training flags without --demo (they would be ignored)."""
    if script in ("callbacks_lightning.py", "loggers_lightning.py") and "--demo" not in argv.split():
        return ""
    return TINY.get(script, "")


def run_in_order(lines: list, data_dir: Path, folder: Path, timeout: int) -> tuple:
    """Run the lines in one bash, in folder; returns (exit code per line, skipped, output)."""
    for script in ROOT.glob("*.py"):
        shutil.copy(script, folder)
    shutil.copytree(ROOT / "benchmarks", folder / "benchmarks")
    shutil.copytree(ROOT / "configs", folder / "configs")
    program, ran, skipped = [], [], []
    for line in lines:
        command, reason = as_run_here(line, data_dir)
        if command is None:
            skipped.append((line, reason))
            continue
        program += [f"echo {shlex.quote(f'>>> {len(ran)}: {command}')}", command, f'echo "{len(ran)} $?" >> .exit_codes']
        ran.append(line)
    env = script_env(PATH_DATASETS=str(data_dir))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `python` is this interpreter
    result = subprocess.run(["bash", "-c", "\n".join(program) + "\nwait"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    codes = dict(line.split() for line in (folder / ".exit_codes").read_text().splitlines())
    return {line: int(codes.get(str(i), -1)) for i, line in enumerate(ran)}, skipped, result.stdout


def check_page(page: str, data_dir: Path, folder: Path, timeout: int = 3000):
    codes, skipped, output = run_in_order(shell_lines(page), data_dir, folder, timeout)
    assert codes, f"{page}: no command ran"
    for line, _ in skipped:
        assert "python " not in line or "benchmarks/" in line or line.startswith(("torchrun", "srun")), \
            f"{page}: a script command was skipped: {line}"
    wrong = [f"exit {code} (expected {expected}): {line}" for line, code in codes.items()
             if code != (expected := next((c for k, c in EXPECTED_EXIT.items() if k in line), 0))]
    assert not wrong, f"{page}:\n" + "\n".join(wrong) + "\n\n" + output[-6000:]
    return codes, output


def test_the_runner_sees_failures_and_expected_failures(mnist_dir, tmp_path):
    """The runner is not vacuous: it reads each line's exit code, in the order of the page."""
    lines = ["true", "(exit 3)", "tensorboard --logdir x", "python loggers_lightning.py --demo --bogus_flag"]
    codes, skipped, output = run_in_order(lines, mnist_dir, tmp_path, 300)
    assert list(codes.values()) == [0, 3, 2]
    assert skipped == [("tensorboard --logdir x", "starts a server that runs until it is stopped")]
    assert "python loggers_lightning.py --demo --bogus_flag --epochs 1 --batch_size 64" in output  # TINY appended
    assert as_run_here("python loggers_lightning.py  # the catalogue", tmp_path)[0] == "python loggers_lightning.py  # the catalogue"


def test_resume_recipe_works_after_the_commands_above_it(mnist_dir, tmp_path):
    """The quick one: the checkpoints chapter's first block leaves a last.ckpt behind; its
    kill-and-resume recipe, run next, must still kill a run of its own and resume it."""
    blocks = [block for block in code_blocks("docs/checkpoints.md", "bash")]
    recipe = next(block for block in blocks if "kill -9" in block)
    lines = [line for block in (blocks[0], recipe) for line in block.splitlines() if line.strip()]
    codes, skipped, output = run_in_order(lines, mnist_dir, tmp_path, 600)
    assert not skipped and codes and set(codes.values()) == {0}, output[-6000:]
    assert "Restoring states from the checkpoint path" in output  # the resume did resume
    assert "test accuracy" in output.split("Restoring states")[-1]


# docs/performance.md holds only benchmark and pytest commands, all of them in SKIPPED.
@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in ENGLISH if page != "docs/performance.md"])
def test_page_runs_top_to_bottom(page, mnist_dir, tmp_path):
    check_page(page, mnist_dir, tmp_path)


def test_only_benchmarks_and_pytest_are_left_out_of_the_performance_page():
    assert all(as_run_here(line, Path("."))[0] is None for line in shell_lines("docs/performance.md"))
