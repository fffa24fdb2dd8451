"""check_point_save.py keeps the right files and resumes a killed run exactly; check_point_load.py
loads them back with the accuracy they had, and refuses bad files with one line, touching nothing.

Three training runs in module fixtures (kept on one xdist worker): a reference run with
--save_weights_only, and a run SIGKILLed once its second epoch is saved, then resumed; one more
run is SIGTERMed and resumed with the command it printed. The bad-input cases, which stop before
any training, call main() in this process: far cheaper than a fresh Python each (more of them in
test_checkpoints_bad_input.py).
"""
import argparse
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from conftest import ROOT, assert_clean_error, exit_of, interrupt, load_script, printed_accuracy, run_in, script_env

# 4 short epochs: 10 of the 40 synthetic training batches each, all 8 validation batches. With
# seed 2 the best valid_acc came at epoch 2 of 0-3 (torch 2.14 CPU): the resumed run's final test
# then reloads a full checkpoint older than the end, which rolls the callbacks' states back.
TRAIN = ("--epochs", "4", "--batch_size", "64", "--val_size", "500", "--limit_train_batches", "10",
         "--save_top_k", "2", "--every_n_epochs", "2", "--seed", "2")
TOP_K, EPOCHS, STEPS_PER_EPOCH = 2, 4, 10
# One xdist worker for the whole file, so each module fixture trains once, not once per worker.
pytestmark = pytest.mark.xdist_group("checkpoints")


def snapshot(folder: Path) -> dict:
    """Every path under folder with the content and modification time of each file."""
    return {str(path.relative_to(folder)): (path.stat().st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
            if path.is_file() else "dir" for path in sorted(folder.rglob("*"))}


def ckpt_names(folder: Path) -> list:
    return sorted(path.name for path in folder.glob("*.ckpt"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_dir):
    """An uninterrupted run whose files hold the weights only."""
    root = tmp_path_factory.mktemp("reference")
    result = run_in(root, "check_point_save.py", *TRAIN, "--save_weights_only", "--data_dir", mnist_dir,
                    "--output_dir", root / "run", check=True)
    return SimpleNamespace(out=root / "run", result=result, history=pd.read_csv(root / "run" / "history.csv"))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, mnist_dir):
    """The same run, SIGKILLed in epoch 2 once epoch 1 is saved, then run again with --resume.
    It writes to the default --output_dir, where check_point_load.py looks by default."""
    root = tmp_path_factory.mktemp("resumed")
    out = root / "outputs" / "check_point_save"
    args = (*TRAIN, "--data_dir", mnist_dir)
    process = subprocess.Popen([sys.executable, str(ROOT / "check_point_save.py"), *map(str, args)], cwd=root,
                               env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder, killed_at = out / "checkpoints", None
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        # Wait for all of epoch 1's files (best loss, best accuracy, periodic, last), so that the
        # kill also checks that last.ckpt records every callback's choice. Files appear by rename:
        # whenever one exists it is complete.
        last = folder / "last.ckpt"
        if len(list(folder.glob("epoch=01*.ckpt"))) == 3 and last.exists():
            if (epoch := torch.load(last, weights_only=True)["epoch"]) >= 1:
                os.kill(process.pid, signal.SIGKILL)
                killed_at = epoch
                break
        time.sleep(0.02)
    process.wait()
    at_kill = ckpt_names(folder)
    result = run_in(root, "check_point_save.py", *args, "--resume", check=True)
    return SimpleNamespace(root=root, out=out, result=result, killed_at=killed_at, returncode=process.returncode,
                           at_kill=at_kill, history=pd.read_csv(out / "history.csv"))


def expected_names(history: pd.DataFrame) -> list:
    """What the callbacks must have kept, worked out from the per-epoch table."""
    names = ["last.ckpt", "manual.ckpt"]
    names += [f"epoch={epoch:02d}.ckpt" for epoch in range(EPOCHS) if (epoch + 1) % 2 == 0]  # every_n_epochs=2
    # Ties go to the earlier epoch: ModelCheckpoint replaces a kept file only by a strictly better one.
    for metric, lowest_first in (("valid_loss", True), ("valid_acc", False)):
        ranked = history.sort_values([metric, "epoch"], ascending=[lowest_first, True]).head(TOP_K)
        names += [f"epoch={int(row.epoch):02d}-{metric}={getattr(row, metric):.4f}.ckpt" for row in ranked.itertuples()]
    return sorted(names)


def test_save_top_k_keeps_exactly_these_files(reference):
    folder = reference.out / "checkpoints"
    assert len(reference.history) == EPOCHS
    assert ckpt_names(folder) == expected_names(reference.history)
    assert len(ckpt_names(folder)) == 2 * TOP_K + 2 + 2
    assert not [path.name for path in folder.iterdir() if not path.name.endswith(".ckpt")]  # no .partial left
    table = reference.result.stdout.split("Checkpoints in")[1]
    for name in ckpt_names(folder):
        assert name in table


def test_best_files_hold_the_best_epochs(reference):
    folder, history = reference.out / "checkpoints", reference.history.set_index("epoch")
    for metric, best_epoch in (("valid_loss", history.valid_loss.idxmin()), ("valid_acc", history.valid_acc.idxmax())):
        best = f"epoch={best_epoch:02d}-{metric}={history.loc[best_epoch, metric]:.4f}.ckpt"
        assert re.search(rf"best by {metric}:\s+{re.escape(best)}", reference.result.stdout)
        assert re.search(rf"{re.escape(best)}\s+best_\w+\s+{metric}=\S+\s+1\s", reference.result.stdout)  # rank 1
    epoch_files = sorted(folder.glob("epoch=*.ckpt"))
    assert len(epoch_files) == 2 * TOP_K + 2  # the loop below checks every kept epoch file, and not none
    for path in epoch_files:  # the epoch in each name is the epoch inside the file
        checkpoint = torch.load(path, weights_only=True)
        epoch = int(re.match(r"epoch=(\d+)", path.name).group(1))
        assert (checkpoint["epoch"], checkpoint["global_step"]) == (epoch, (epoch + 1) * STEPS_PER_EPOCH)
        assert "optimizer_states" not in checkpoint and "callbacks" not in checkpoint  # --save_weights_only


def test_weights_only_checkpoint_cannot_resume(reference, tmp_path):
    before = snapshot(reference.out)
    result = run_in(tmp_path, "check_point_save.py", *TRAIN, "--resume", "--output_dir", reference.out)
    assert_clean_error(result, "save_weights_only", "cannot resume")
    assert snapshot(reference.out) == before


def test_killed_run_resumes_to_the_same_metrics(reference, resumed):
    assert resumed.returncode == -signal.SIGKILL
    assert resumed.killed_at in range(1, EPOCHS - 1), "the kill came too late to leave training to resume"
    assert "last.ckpt" in resumed.at_kill
    # It really resumed: Lightning restored the file, and the new log starts after the killed epoch.
    assert "Restoring states from the checkpoint path" in resumed.result.out
    new_log = pd.read_csv(resumed.out / "csv_logs" / "version_1" / "metrics.csv")
    assert new_log.epoch.min() == resumed.killed_at + 1
    # ... and ended exactly where the uninterrupted run ended, with the same files kept.
    pd.testing.assert_frame_equal(resumed.history, reference.history, check_exact=False, atol=1e-6, rtol=0)
    assert ckpt_names(resumed.out / "checkpoints") == ckpt_names(reference.out / "checkpoints")
    assert not [path.name for path in (resumed.out / "checkpoints").iterdir() if path.suffix != ".ckpt"]
    assert printed_accuracy(resumed.result.out) == printed_accuracy(reference.result.out)
    full, weights_only = (run.out / "checkpoints" / "last.ckpt" for run in (resumed, reference))
    assert weights_only.stat().st_size < 0.5 * full.stat().st_size  # no optimizer moments


def test_loaded_checkpoint_has_the_saved_accuracy(resumed, tmp_path, mnist_dir):
    before = snapshot(resumed.out)
    # The defaults: --ckpt_dir outputs/check_point_save/checkpoints --pick best_acc.
    result = run_in(resumed.root, "check_point_load.py", "--data_dir", mnist_dir, "--save_model", check=True)
    loaded = resumed.root / "outputs" / "check_point_load"
    accuracy = printed_accuracy(result.out)
    assert accuracy == printed_accuracy(resumed.result.out) and accuracy > 0.5
    best = re.search(r"best by valid_acc:\s+(\S+)", resumed.result.stdout).group(1)
    assert f"Checkpoint: {(resumed.out / 'checkpoints' / best).resolve()}" in result.stdout
    for shown in ("global_step", "hyper_parameters", "optimizer_states", "lr_schedulers", "ResumableState",
                  "cannot be called on an instance", "max logit difference 0.0e+00"):
        assert shown in result.stdout, shown
    assert (loaded / "predictions.png").stat().st_size > 10_000
    assert snapshot(resumed.out) == before

    # The plain state_dict it wrote loads back, without hyper_parameters, to the same accuracy.
    plain = run_in(tmp_path, "check_point_load.py", "--ckpt", loaded / "mnist_classifier.pt",
                   "--data_dir", mnist_dir, check=True)
    assert printed_accuracy(plain.out) == accuracy


# %% Bad input: main() in this process; each case must fail before it writes anything.
@pytest.fixture(scope="module")
def scripts():
    return SimpleNamespace(save=load_script("check_point_save.py"), load=load_script("check_point_load.py"))


def last_ckpt(run) -> Path:
    return run.out / "checkpoints" / "last.ckpt"


def good_checkpoint(run) -> dict:
    return torch.load(last_ckpt(run), weights_only=True)


def with_weights(checkpoint: dict, **changes) -> dict:
    return {**checkpoint, "state_dict": {**checkpoint["state_dict"], **changes}}


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


# Each case: (make the input in folder `bad`, from the resumed run) -> (argv, phrases the error must hold)
LOAD_CASES = {
    "missing file": lambda bad, run: (["--ckpt", bad / "missing.ckpt"], ["no such file"]),
    "folder as --ckpt": lambda bad, run: (["--ckpt", bad], ["is a folder"]),
    "missing folder": lambda bad, run: (["--ckpt_dir", bad / "nowhere"], ["no such folder"]),
    "folder without checkpoints": lambda bad, run: (
        ["--ckpt_dir", write(bad / "empty_dir" / "notes.txt", b"x").parent], ["holds no .ckpt"]),
    "empty file": lambda bad, run: (["--ckpt", write(bad / "empty.ckpt", b"")], ["empty", "0 bytes"]),
    "truncated early": lambda bad, run: (
        ["--ckpt", write(bad / "cut.ckpt", last_ckpt(run).read_bytes()[:50_000])],
        ["truncated"]),
    "truncated late": lambda bad, run: (
        ["--ckpt", write(bad / "cut.ckpt", last_ckpt(run).read_bytes()[:-1000])],
        ["truncated"]),
    "text file": lambda bad, run: (["--ckpt", write(bad / "notes.ckpt", b"epoch 3, loss 0.1\n")],
                                   ["not a PyTorch checkpoint"]),
    "random bytes": lambda bad, run: (["--ckpt", write(bad / "noise.ckpt", os.urandom(20_000))],
                                      ["not a PyTorch checkpoint"]),
    "a list, not a checkpoint": lambda bad, run: (["--ckpt", write(bad / "list.pt", [1, 2, 3])],
                                                  ["not a checkpoint", "list"]),
    "shape mismatch": lambda bad, run: (
        ["--ckpt", write(bad / "wide.ckpt", with_weights(good_checkpoint(run), **{
            "model.classifier.1.weight": torch.zeros(64, 1568), "model.classifier.1.bias": torch.zeros(64)}))],
        ["different model", "model.classifier.1.weight", "[64, 1568]", "[128, 1568]"]),
    "another model's layers": lambda bad, run: (
        ["--ckpt", write(bad / "other.ckpt", {**good_checkpoint(run), "state_dict": {"encoder.weight": torch.zeros(4)}})],
        ["different model", "encoder.weight", "features.0.weight"]),
    "unsafe object inside": lambda bad, run: (
        ["--ckpt", write(bad / "old_style.ckpt", {**good_checkpoint(run), "hyper_parameters": argparse.Namespace(lr=0.1)})],
        ["argparse.Namespace", "weights_only", "--trust_checkpoint"]),
    "--pick with nothing matching": lambda bad, run: (
        ["--ckpt_dir", write(bad / "only_last" / "last.ckpt", last_ckpt(run).read_bytes()).parent,
         "--pick", "best_loss"], ["--pick best_loss", "valid_loss"]),
    "--pick last without last.ckpt": lambda bad, run: (
        ["--ckpt_dir", write(bad / "no_last" / "epoch=01-valid_acc=0.5000.ckpt", good_checkpoint(run)).parent,
         "--pick", "last"], ["no last.ckpt"]),
}


@pytest.mark.parametrize("case", LOAD_CASES)
def test_load_refuses_bad_input(case, scripts, resumed, tmp_path, mnist_dir, capsys):
    (tmp_path / "bad").mkdir()
    argv, phrases = LOAD_CASES[case](tmp_path / "bad", resumed)
    before = snapshot(tmp_path)
    result = exit_of(scripts.load.main, [*argv, "--data_dir", mnist_dir, "--output_dir", tmp_path / "out"], capsys)
    assert_clean_error(result, *phrases)
    assert snapshot(tmp_path) == before  # nothing written, not even the output folder


def without_resumable_state(run) -> dict:
    checkpoint = good_checkpoint(run)
    return {**checkpoint, "callbacks": {k: v for k, v in checkpoint["callbacks"].items() if k != "ResumableState"}}


SAVE_CASES = {
    "resume with nothing to resume": lambda bad, run: (["--resume", "--output_dir", bad / "new"],
                                                       ["no", "last.ckpt", "without --resume"]),
    "resume with other flags": lambda bad, run: (["--resume", "--output_dir", run.out, "--epochs", "6"],
                                                 ["--epochs 4 (now 6)", "--overwrite"]),
    "resume from another script's checkpoint": lambda bad, run: (
        ["--resume", write(bad / "foreign.ckpt", without_resumable_state(run)), "--output_dir", bad / "new"],
        ["not written by check_point_save.py"]),
    "resume from a file that is not a Lightning checkpoint": lambda bad, run: (
        # What quant_lightning_ptq.py saves: a state_dict with its backend, no Lightning keys at all.
        ["--resume", write(bad / "mnist_int8.pt", {"state_dict": good_checkpoint(run)["state_dict"], "backend": "x86",
                                                   "hidden_units": 128}), "--output_dir", bad / "new"],
        ["mnist_int8.pt", "not a Lightning checkpoint", "backend"]),
    "resume from a truncated file": lambda bad, run: (
        ["--resume", write(bad / "cut.ckpt", last_ckpt(run).read_bytes()[:50_000]),
         "--output_dir", bad / "new"], ["truncated"]),
    "fresh run over earlier checkpoints": lambda bad, run: (["--output_dir", run.out], ["--resume", "--overwrite"]),
    "save_top_k 0": lambda bad, run: (["--save_top_k", "0", "--output_dir", bad / "new"], ["--save_top_k", "last.ckpt"]),
}


@pytest.mark.parametrize("case", SAVE_CASES)
def test_save_refuses_bad_input(case, scripts, resumed, tmp_path, mnist_dir, capsys):
    (tmp_path / "bad").mkdir()
    argv, phrases = SAVE_CASES[case](tmp_path / "bad", resumed)
    before, run_before = snapshot(tmp_path), snapshot(resumed.out)
    result = exit_of(scripts.save.main, [*TRAIN, "--data_dir", mnist_dir, *argv], capsys)
    assert_clean_error(result, *phrases)
    assert snapshot(tmp_path) == before and snapshot(resumed.out) == run_before


def test_an_interrupted_save_leaves_the_previous_file(scripts, tmp_path):
    """AtomicCheckpointIO writes beside the target and renames: a save that dies half-way
    leaves the previous last.ckpt whole, and no partial file that a loader could pick up."""
    class FailsHalfWay:
        def __reduce__(self):
            raise RuntimeError("disk full")

    writer, target = scripts.save.AtomicCheckpointIO(), tmp_path / "last.ckpt"
    writer.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(1000)}}, target)
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="disk full"):
        writer.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.ones(1000)}, "extra": FailsHalfWay()}, target)
    assert snapshot(tmp_path) == before
    assert torch.load(target, weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_sigterm_exits_143_with_a_resume_command_that_finishes_the_run(reference, tmp_path, mnist_dir):
    """A scheduler's stop during an --overwrite run, once its first checkpoint is saved: exit 143
    (not success), the exact --resume command, only whole checkpoints left, and that command ends
    the run where an uninterrupted one ends. The earlier run (a copy of the reference) is replaced."""
    out = tmp_path / "run"
    shutil.copytree(reference.out, out)
    folder, earlier = out / "checkpoints", {hashlib.sha1(path.read_bytes()).hexdigest()
                                            for path in (out / "checkpoints").glob("*.ckpt")}
    def this_run_saved():  # the reference's files are weights only; this run's last.ckpt holds the optimizer too
        with contextlib.suppress(FileNotFoundError):  # moved aside, or not written yet
            return "optimizer_states" in torch.load(folder / "last.ckpt", weights_only=True)

    result = interrupt(tmp_path, "check_point_save.py", *TRAIN, "--data_dir", mnist_dir, "--output_dir", out,
                       "--overwrite", when=this_run_saved)
    output = result.out
    assert result.returncode == 143, output[-2000:]
    assert "interrupted by SIGTERM" in output and "test accuracy" not in output and "Traceback" not in output
    command = shlex.split(re.search(r"resume with: (.+)$", output, re.M).group(1))
    assert command[:2] == ["python", str(ROOT / "check_point_save.py")] and command[-1] == "--resume"
    assert "--overwrite" not in command

    left = sorted(folder.glob("*.ckpt"))
    assert "last.ckpt" in [path.name for path in left]
    for path in left:  # every file left behind is whole, and none is the earlier run's
        assert torch.load(path, weights_only=True)["epoch"] >= 0
        assert hashlib.sha1(path.read_bytes()).hexdigest() not in earlier, path.name
    assert [path.name for path in folder.iterdir() if path.suffix != ".ckpt"] == []  # no .partial, no hidden folder

    resumed = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=script_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    history = pd.read_csv(out / "history.csv")
    pd.testing.assert_frame_equal(history, reference.history, check_exact=False, atol=1e-6, rtol=0)
    assert printed_accuracy(resumed.stdout) == printed_accuracy(reference.result.out)
