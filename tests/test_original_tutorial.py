"""The original 1.x tutorial's commands, as listed in the README's table, still do what the table
says: each one runs (with tiny settings, on the synthetic MNIST) and is checked here."""
import contextlib
import io
import os
import re
import shlex
from types import SimpleNamespace

import pytest

from conftest import ROOT, load_script, printed_accuracy

ROW = re.compile(r"^\| `(python [^`]+)` \|", re.M)
# Tiny settings: one short epoch on the synthetic set (3000 training images) instead of 15 on MNIST.
TINY = ("--val_size", "500", "--limit_train_batches", "20")
TRAINS = ("Basic_usage_of_lightning.py", "check_point_save.py")


def table(readme: str) -> list:
    return ROW.findall((ROOT / readme).read_text(encoding="utf-8"))


def tiny(argv: list) -> list:
    """argv with --epochs cut to 1 (2 stays 2) and, for a command that trains, the tiny settings."""
    argv = [("1" if previous == "--epochs" and value not in ("1", "2") else value)
            for previous, value in zip([None, *argv], argv)]
    trains = argv[0] in TRAINS and not {"--load_model", "--named_modules"} & set(argv)
    return argv + list(TINY) if trains else argv


@pytest.fixture(scope="module")
def ran(mnist_dir, tmp_path_factory):
    """Every command of the table, in its order, in one folder (a later one loads what an earlier
    one saved), in this process: command -> its exit code and output."""
    folder = tmp_path_factory.mktemp("original_tutorial")
    results, here = {}, os.getcwd()
    os.environ["PATH_DATASETS"] = str(mnist_dir)
    os.chdir(folder)
    try:
        for command in table("README.md"):
            script, *argv = tiny(shlex.split(command)[1:])
            output = io.StringIO()
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                try:
                    code = load_script(script).main(argv)
                except SystemExit as stop:
                    code = stop.code
            results[command] = SimpleNamespace(code=code, out=output.getvalue(), folder=folder)
    finally:
        os.chdir(here)
        del os.environ["PATH_DATASETS"]
    return results


def note(flag: str, phrase: str):
    return rf"^note: {re.escape(flag)} \(from the original tutorial\): .*{re.escape(phrase)}"


def trained_and_saved(result):
    assert printed_accuracy(result.out) > 0.5  # chance is 0.1
    assert (result.folder / "outputs" / "Basic_usage_of_lightning" / "mnist_classifier.pt").stat().st_size > 0


def with_test_note(result):
    trained_and_saved(result)
    assert re.search(note("--test", "always ends with a test"), result.out, re.M)


def old_flags(result):
    assert printed_accuracy(result.out) > 0.5
    for flag, phrase in (("--no-cuda", "--accelerator cpu"), ("--gamma", "no effect"),
                         ("--log-interval", "no effect")):
        assert re.search(note(flag, phrase), result.out, re.M), flag
    assert "GPU available" not in result.out or "used: False" in result.out


def reproduces_the_saved_accuracy(result, ran):
    saved_by = ran["python Basic_usage_of_lightning.py --epochs 15 --save_model --test"]
    assert printed_accuracy(result.out) == printed_accuracy(saved_by.out)
    assert "Epoch 0" not in result.out  # no training


def prints_the_model(result):
    assert "model.features.0" in result.out and "total trainable parameters" in result.out


def keeps_checkpoints(result):
    assert re.search(note("--save_model", "always"), result.out, re.M)
    assert (result.folder / "outputs" / "check_point_save" / "checkpoints" / "last.ckpt").is_file()
    assert printed_accuracy(result.out) > 0.5


def loads_that_checkpoint(result):
    assert re.search(r"^Checkpoint: .*outputs/check_point_save/checkpoints/last\.ckpt$", result.out, re.M) and printed_accuracy(result.out) > 0.5


def catalogue(folder_name: str):
    def check(result):
        files = list((result.folder / "outputs" / folder_name).glob("*.txt"))
        assert len(files) > 5 and "Epoch" not in result.out  # offline, no training
    return check


CHECKS = {
    "python Basic_usage_of_lightning.py --epochs 15 --save_model": trained_and_saved,
    "python Basic_usage_of_lightning.py --epochs 15 --save_model --test": with_test_note,
    "python Basic_usage_of_lightning.py --batch_size 64 --test-batch-size 1000 --epochs 1 --seed 1 --no-cuda "
    "--gamma 0.7 --log-interval 10": old_flags,
    "python Basic_usage_of_lightning.py --load_model outputs/Basic_usage_of_lightning/mnist_classifier.pt":
        reproduces_the_saved_accuracy,
    "python Basic_usage_of_lightning.py --named_modules --named_parameters": prints_the_model,
    "python check_point_save.py --epochs 2 --save_model": keeps_checkpoints,
    "python check_point_load.py --load_model outputs/check_point_save/checkpoints/last.ckpt": loads_that_checkpoint,
    "python callbacks_lightning.py": catalogue("callbacks_lightning/callbacks_info"),
    "python loggers_lightning.py": catalogue("loggers_lightning/loggers_info"),
}


def test_both_readmes_list_the_commands_checked_here():
    assert table("README.md") == table("README.ja.md") == list(CHECKS)


@pytest.mark.parametrize("command", list(CHECKS))
def test_original_command_does_what_the_table_says(ran, command):
    result = ran[command]
    assert result.code == 0, result.out[-3000:]
    assert "Traceback" not in result.out
    check = CHECKS[command]
    check(result, ran) if check is reproduces_the_saved_accuracy else check(result)
