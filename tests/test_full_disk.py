"""A real full disk, not a simulated one: a 3 MB tmpfs mounted as --output_dir (the data stay on
the normal disk). Every writer must end in one `error:` line and exit 2, with no traceback, no
partial file, and an earlier file of the same name left as it was."""
import os
import shutil
import subprocess

import pandas as pd
import pytest
import torch

from conftest import assert_clean_error, exit_of, load_script

EARLIER = b"an earlier run's file, which a failed write must leave as it was"
TINY = ("--epochs", "1", "--batch_size", "64", "--val_size", "500", "--limit_train_batches", "2",
        "--limit_val_batches", "1", "--limit_test_batches", "1")


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB filesystem at tmp_path/disk, unmounted afterwards; skipped where none can be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command on this machine, so no real small filesystem to fill")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (it needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk, leave: int = 0) -> None:
    """Take all the disk's free space but `leave` bytes."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as file:
        file.write(b"\0" * max(free - leave, 0))


def earlier(path):
    """An earlier run's file at path (made before the disk is filled)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(EARLIER)
    return path


def assert_kept(*paths) -> None:
    for path in paths:
        assert path.read_bytes() == EARLIER, f"{path} was changed by the failed write"
        assert not list(path.parent.glob(".*.partial")), "a partial file was left behind"


@pytest.fixture(scope="module")
def basic():
    return load_script("Basic_usage_of_lightning.py")


@pytest.fixture(scope="module")
def ptq():
    return load_script("quant_lightning_ptq.py")


def test_a_checkpoint_on_a_full_disk(basic, small_disk, mnist_dir, capsys, one_thread):
    out = small_disk / "out"
    best = earlier(out / "checkpoints" / "best.ckpt")
    fill(small_disk, leave=400_000)  # the logs fit, a checkpoint (about 2.5 MB) does not
    result = exit_of(basic.main, [*TINY, "--data_dir", mnist_dir, "--output_dir", out], capsys)
    assert_clean_error(result, "cannot write", "best.ckpt", "free some space")
    assert_kept(best)


def test_the_logs_on_a_full_disk(basic, small_disk, mnist_dir, capsys, one_thread):
    """CSVLogger and TensorBoardLogger write through their libraries (TensorBoard from a thread of
    its own): their failure is caught around fit and said once."""
    out = small_disk / "out"
    fill(small_disk)
    result = exit_of(basic.main, [*TINY, "--data_dir", mnist_dir, "--output_dir", out], capsys)
    assert_clean_error(result, f"cannot write under {out}", "No space left on device")
    assert "Exception in thread" not in result.out


def test_a_checkpoint_folder_on_a_read_only_filesystem(basic, small_disk, mnist_dir, capsys, one_thread):
    """Not a space problem: the line names the cause and a fix that fits it (no "free some space")."""
    out = small_disk / "out"
    best = earlier(out / "checkpoints" / "best.ckpt")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out / "checkpoints")], check=True)
    try:
        earlier(out / "checkpoints" / "best.ckpt")
        subprocess.run(["mount", "-o", "remount,ro", str(out / "checkpoints")], check=True)
        result = exit_of(basic.main, [*TINY, "--data_dir", mnist_dir, "--output_dir", out], capsys)
        assert_clean_error(result, "cannot write", "best.ckpt", "Read-only file system",
                           "pick an --output_dir you can write to", "untouched")
        assert "free some space" not in result.stderr
        assert_kept(best)
    finally:
        subprocess.run(["umount", "-l", str(out / "checkpoints")], check=True)
    assert_kept(best)  # and the folder under the mount was never touched


@pytest.mark.parametrize("flags, name", [(["--save_model"], "mnist_classifier.pt"),
                                         (["--export", "pt2"], "mnist_classifier.pt2")])
def test_a_saved_or_exported_model_on_a_full_disk(basic, small_disk, mnist_dir, tmp_path, capsys, one_thread,
                                                  flags, name):
    weights = tmp_path / "weights.pt"  # on the normal disk: no training needed
    torch.save(basic.MNISTConvNet().state_dict(), weights)
    out = small_disk / "out"
    model_file = earlier(out / name)
    fill(small_disk, leave=300_000)  # the test's logs fit, the model (about 0.8 MB) does not
    result = exit_of(basic.main, ["--data_dir", mnist_dir, "--output_dir", out, "--load_model", weights,
                                  "--limit_test_batches", "1", *flags], capsys)
    assert_clean_error(result, "cannot write", name)
    assert_kept(model_file)


def test_history_and_plots_on_a_full_disk(basic, small_disk, capsys):
    history = pd.DataFrame({"train_loss": [0.5, 0.3], "valid_loss": [0.4, 0.35], "train_acc": [0.8, 0.9],
                            "valid_acc": [0.85, 0.88]}, index=pd.Index([0, 1], name="epoch"))
    table, plot = earlier(small_disk / "history.csv"), earlier(small_disk / "loss.png")
    fill(small_disk)
    assert_clean_error(exit_of(lambda _: basic.write_atomically(table, history.to_csv), [], capsys),
                       "cannot write", "history.csv", "No space left on device")
    assert_clean_error(exit_of(lambda _: basic.plot_history(history, small_disk), [], capsys),
                       "cannot write", "loss.png")
    assert_kept(table, plot)


def test_the_results_table_and_a_pt2_program_on_a_full_disk(ptq, small_disk, capsys):
    results = small_disk / "quant_results.csv"
    pd.DataFrame([dict(method="PTQ eager", threads=1)], columns=ptq.RESULT_COLUMNS).to_csv(results, index=False)
    before = results.read_bytes()
    program = earlier(small_disk / "mnist_fp32.pt2")
    exported = ptq.export_program(ptq.MNISTConvBNNet().eval())
    fill(small_disk)
    row = dict(method="PTQ PT2E", backend="x86", threads=1, fp32_acc=0.9, int8_acc=0.9, fp32_kb=1, int8_kb=1,
               size_ratio=1)
    assert_clean_error(exit_of(lambda _: ptq.append_result(row, results), [], capsys),
                       "cannot write", "quant_results.csv")
    assert results.read_bytes() == before
    assert_clean_error(exit_of(lambda _: ptq.save_program(exported, program), [], capsys),
                       "cannot write", "mnist_fp32.pt2")
    assert_kept(program)


def test_quantizing_onto_a_full_disk(ptq, small_disk, mnist_dir, tmp_path, capsys, one_thread):
    """The issue's case: torch.save said RuntimeError ('unexpected pos'), not OSError."""
    weights = tmp_path / "mnist_fp32.pt"
    torch.save(ptq.MNISTConvBNNet().state_dict(), weights)
    out = small_disk / "out"
    fp32 = earlier(out / "mnist_fp32.pt")
    fill(small_disk, leave=500_000)  # the float state_dict is about 1.6 MB
    result = exit_of(ptq.main, ["--data_dir", mnist_dir, "--output_dir", out, "--ckpt", weights,
                                "--calibration_batches", "1", "--limit_test_batches", "1", "--val_size", "500",
                                "--latency_repeats", "0"], capsys)
    assert_clean_error(result, "cannot write", "mnist_fp32.pt")
    assert_kept(fp32)


def test_mlflow_logs_on_a_full_disk(small_disk, mnist_dir, capsys, one_thread):
    pytest.importorskip("mlflow")
    loggers = load_script("loggers_lightning.py")
    out = small_disk / "out"
    fill(small_disk)
    argv = [*TINY, "--log_every_n_steps", "1", "--data_dir", mnist_dir, "--output_dir", out, "--demo", "--loggers", "mlflow"]
    result = exit_of(loggers.main, argv, capsys)
    assert_clean_error(result, "cannot write", "No space left on device")
