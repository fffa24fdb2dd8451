"""Every script opened as a notebook: converted by jupytext, run top to bottom by nbclient in a real
IPython kernel, its flags given as papermill gives them (a cell after the one tagged `parameters`),
on the synthetic MNIST. A notebook run must end as the command line does: same report, same files,
and bad input gives the same one line while the kernel lives on."""
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from conftest import QUICK, ROOT, exit_of, load_script, printed_accuracy, script_env

SHORT = (*QUICK, "--limit_train_batches", "20")  # 20 batches of 64: enough to learn the synthetic set
QUANT = (*SHORT, "--latency_repeats", "3", "--threads", "1")


def notebook(script: str, args=None, lesson_only=False, then=()) -> nbformat.NotebookNode:
    """The script as jupytext converts it: with args, a cell `ARGS = [...]` right after the cell
    tagged parameters (as papermill injects it); lesson_only keeps the cells above `# %% Main`;
    then: code cells a user adds at the end."""
    nb = jupytext.read(ROOT / script)
    titles = [cell.metadata.get("title") for cell in nb.cells]
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{script}: one cell must be tagged parameters"
    if lesson_only:
        nb.cells = nb.cells[:titles.index("Main")]
    if args is not None:
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(f"ARGS = {[str(arg) for arg in args]!r}"))
    nb.cells += [nbformat.v4.new_code_cell(code) for code in then]
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel started in cwd; an error in any cell fails the test."""
    env = script_env(PYDEVD_DISABLE_FILE_VALIDATION="1")
    del env["MPLBACKEND"]  # the kernel's own inline backend, as in Jupyter
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute(env=env)
    return nb


def streams(nb: nbformat.NotebookNode, name: str) -> str:
    return "".join(output.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for output in cell.outputs if output.output_type == "stream" and output.name == name)


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for output in cell.outputs)


def assert_ran_cleanly(nb: nbformat.NotebookNode) -> None:
    errors = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors, errors
    assert "Traceback" not in streams(nb, "stderr"), streams(nb, "stderr")[-3000:]


def test_basic_notebook_runs_top_to_bottom_like_the_command_line(mnist_dir, tmp_path):
    nb = execute(notebook("Basic_usage_of_lightning.py", ["--data_dir", mnist_dir, "--output_dir", "out", *SHORT]),
                 tmp_path)
    assert_ran_cleanly(nb)
    out = streams(nb, "stdout")
    assert printed_accuracy(out) > 0.3  # 10 classes: chance is 0.1
    assert re.search(r"^\s+train_loss\s+valid_loss\s+train_acc\s+valid_acc\s*\nepoch\s*\n0\s", out, re.M), out[-2000:]
    assert f"Outputs in {(tmp_path / 'out').resolve()}" in out
    for name in ("history.csv", "loss.png", "acc.png", "checkpoints/best.ckpt"):
        assert (tmp_path / "out" / name).is_file(), name
    assert images(nb) == 2  # the loss and accuracy curves, inline as well as saved


def test_lesson_cells_stand_alone_and_a_users_trainer_learns(mnist_dir, tmp_path):
    """The cells above `# %% Main` define what a reader needs; a cell written as a user would, fits it."""
    users_cell = f"""
model = MNISTClassifier(data_dir={str(mnist_dir)!r}, batch_size=64, val_size=500)
trainer = pl.Trainer(max_epochs=1, limit_train_batches=20, logger=False, enable_checkpointing=False)
trainer.fit(model)
print("user test accuracy:", trainer.test(model, verbose=False)[0]["test_acc"])
"""
    datamodule_cell = f"""
datamodule = MNISTDataModule(data_dir={str(mnist_dir)!r}, batch_size=64, val_size=500)
trainer = pl.Trainer(max_epochs=1, limit_train_batches=20, logger=False, enable_checkpointing=False)
model = MNISTClassifier(data_dir={str(mnist_dir)!r})  # its own setup runs too
trainer.fit(model, datamodule=datamodule)
print("datamodule test accuracy:", trainer.test(model, datamodule=datamodule, verbose=False)[0]["test_acc"])
"""
    nb = execute(notebook("Basic_usage_of_lightning.py", lesson_only=True, then=[users_cell, datamodule_cell]), tmp_path)
    assert_ran_cleanly(nb)
    assert printed_accuracy(streams(nb, "stdout"), "user test accuracy") > 0.3
    assert printed_accuracy(streams(nb, "stdout"), "datamodule test accuracy") > 0.3
    assert "def main" not in "".join(cell.source for cell in nb.cells)


def test_a_bad_value_in_the_parameters_cell_gives_the_flags_line_and_the_kernel_lives(tmp_path, capsys):
    script = "Basic_usage_of_lightning.py"
    nb = execute(notebook(script, ["--epochs", "0"], then=['print("kernel alive:", 6 * 7)']), tmp_path)
    assert_ran_cleanly(nb)
    command_line = exit_of(load_script(script).parse_args, ["--epochs", "0"], capsys)
    assert command_line.returncode == 2
    error_lines = [line for line in streams(nb, "stderr").splitlines() if line.startswith("error:")]
    assert error_lines == [line for line in command_line.stderr.splitlines() if line.startswith("error:")]
    assert "--epochs" in error_lines[0]
    assert "kernel alive: 42" in streams(nb, "stdout")


def test_no_mnist_offline_in_a_notebook_gives_the_one_line_and_leaves_no_folders(tmp_path):
    args = ["--data_dir", "nowhere/datasets", "--output_dir", "out"]
    nb = execute(notebook("Basic_usage_of_lightning.py", args, then=['print("kernel alive:", 6 * 7)']), tmp_path)
    assert_ran_cleanly(nb)
    error_lines = [line for line in streams(nb, "stderr").splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "MNIST is not in nowhere/datasets/MNIST/raw" in error_lines[0], error_lines
    assert "PATH_DATASETS" in error_lines[0]
    assert list(tmp_path.iterdir()) == []  # no empty nowhere/datasets/MNIST/raw, no out/
    assert "kernel alive: 42" in streams(nb, "stdout")


# The other scripts, as notebooks, with what their command-line tests assert: files and report lines.
@pytest.mark.slow
def test_checkpoint_notebooks_save_then_load(mnist_dir, tmp_path):
    save = execute(notebook("check_point_save.py", ["--data_dir", mnist_dir, "--output_dir", "save", *QUICK,
                                                    "--epochs", "2", "--limit_train_batches", "10"]), tmp_path)
    assert_ran_cleanly(save)
    for name in ("last.ckpt", "manual.ckpt"):
        assert (tmp_path / "save" / "checkpoints" / name).is_file(), name
    assert (tmp_path / "save" / "history.csv").is_file() and images(save) == 2
    load = execute(notebook("check_point_load.py", ["--ckpt_dir", "save/checkpoints", "--pick", "best_acc",
                                                    "--data_dir", mnist_dir, "--output_dir", "load"]), tmp_path)
    assert_ran_cleanly(load)
    assert printed_accuracy(streams(load, "stdout")) > 0.3
    assert (tmp_path / "load" / "predictions.png").is_file() and images(load) == 1


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("quant_lightning_ptq.py", ("--calibration_batches", "4")),
    ("quant_lightning_qat.py", ("--qat_epochs", "1")),
    ("quant_with_only_lightning.py", ("--qat_epochs", "1")),
])
def test_quantization_notebooks(script, args, mnist_dir, tmp_path):
    nb = execute(notebook(script, ["--data_dir", mnist_dir, "--output_dir", "out", *QUANT, *args]), tmp_path)
    assert_ran_cleanly(nb)
    out = streams(nb, "stdout")
    assert printed_accuracy(out, "int8 accuracy, plain PyTorch loop") > 0.3
    assert printed_accuracy(out, "int8 accuracy, Trainer.test") > 0.3
    for name in ("mnist_fp32.pt", "mnist_int8.pt", "quant_results.csv", "history.csv", "loss.png"):
        assert (tmp_path / "out" / name).is_file(), name
    assert images(nb) == 2


@pytest.mark.slow
@pytest.mark.parametrize("script, args, report", [  # the flags of their command-line tests' demo runs
    ("callbacks_lightning.py", ("--epochs", "3", "--stop_at_acc", "0.8", "--ema_decay", "0.9", "--save_model"),
     "What each callback did"),
    ("loggers_lightning.py", ("--epochs", "2", "--save_model"), "Open TensorBoard on this run:  tensorboard --logdir"),
])
def test_callbacks_and_loggers_demo_notebooks(script, args, report, mnist_dir, tmp_path):
    nb = execute(notebook(script, ["--demo", "--data_dir", mnist_dir, "--output_dir", "out", *SHORT, *args]),
                 tmp_path)
    assert_ran_cleanly(nb)
    out = streams(nb, "stdout")
    assert printed_accuracy(out) > 0.5 and report in out
    for name in ("history.csv", "loss.png", "acc.png", "csv_logs/version_0/metrics.csv", "mnist_classifier.pt"):
        assert (tmp_path / "out" / name).is_file(), name
    assert images(nb) == 2


@pytest.mark.slow
@pytest.mark.parametrize("script", [
    "check_point_save.py", "check_point_load.py", "quant_lightning_ptq.py", "quant_lightning_qat.py",
    "quant_with_only_lightning.py", "callbacks_lightning.py", "loggers_lightning.py"])
def test_every_scripts_lesson_cells_stand_alone(script, mnist_dir, tmp_path):
    """As for the basic script: the cells above Main, then a user's Trainer on the module they define
    (check_point_load.py's module only tests: it loads weights that another script trained)."""
    users_cell = f"""
model = MNISTClassifier(data_dir={str(mnist_dir)!r}, batch_size=64, val_size=500)
trainer = pl.Trainer(max_epochs=1, limit_train_batches=20, limit_val_batches=2, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False)
if "training_step" in vars(MNISTClassifier):
    trainer.fit(model)
print("user test accuracy:", trainer.test(model, verbose=False)[0]["test_acc"])
"""
    nb = execute(notebook(script, lesson_only=True, then=[users_cell]), tmp_path)
    assert_ran_cleanly(nb)
    accuracy = printed_accuracy(streams(nb, "stdout"), "user test accuracy")
    assert accuracy > (0.02 if script == "check_point_load.py" else 0.3)  # untrained: about chance
