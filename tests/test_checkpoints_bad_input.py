"""check_point_save.py and check_point_load.py facing careless and hostile input: every flag value
they cannot run with, broken data, an output folder they cannot use, a full disk, a killed
--overwrite, and the original tutorial's flags. Each refusal is one `error:` line and exit 2,
and an earlier run's files are never lost or changed.

main() runs in this process (no fresh Python per case); only the full-disk test trains, briefly.
"""
import errno
import os

import pytest
import torch

from conftest import assert_clean_error, broken_data, exit_of, load_script
from test_checkpoints import snapshot, write

# Cheap flags that pass every check: anything a case adds is what makes it fail.
TINY = ("--epochs", "2", "--batch_size", "64", "--val_size", "500", "--limit_train_batches", "2",
        "--limit_val_batches", "2", "--limit_test_batches", "2", "--accelerator", "cpu")


@pytest.fixture(scope="module")
def scripts():
    return load_script("check_point_save.py"), load_script("check_point_load.py")


@pytest.fixture(autouse=True)
def offline_in_a_fresh_folder(tmp_path, monkeypatch):
    """Any download attempt fails at once, and a default output folder would land in tmp_path."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("PATH_DATASETS", raising=False)
    monkeypatch.chdir(tmp_path)


def earlier_run(out):
    """The folder of an earlier check_point_save.py run: what a refused or failed run must leave as it is."""
    for name in ("last.ckpt", "epoch=01-valid_acc=0.9000.ckpt", "epoch=01-valid_loss=0.3000.ckpt", "manual.ckpt"):
        write(out / "checkpoints" / name, {"epoch": 1, "state_dict": {"model.w": torch.full((3,), float(len(name)))}})
    write(out / "history.csv", b"epoch,valid_acc\n0,0.8\n1,0.9\n")
    write(out / "csv_logs" / "version_0" / "metrics.csv", b"epoch,valid_acc\n0,0.8\n1,0.9\n")
    return out


# (flags, phrases the error line must hold); each runs in both scripts unless it names one.
FLAG_CASES = {
    "batch_size 0": (["--batch_size", "0"], ["--batch_size", "at least 1"]),
    "eval_batch_size 0": (["--eval_batch_size", "0"], ["--eval_batch_size", "at least 1"]),
    "old --test-batch-size 0": (["--test-batch-size", "0"], ["--test-batch-size", "at least 1"]),
    "seed -1": (["--seed", "-1"], ["--seed", "between 0 and"]),
    "num_workers -1": (["--num_workers", "-1"], ["--num_workers", "at least 0"]),
    "limit_test_batches 0": (["--limit_test_batches", "0"], ["--limit_test_batches", "at least 1"]),
    "fast_dev_run -1": (["--fast_dev_run", "-1"], ["--fast_dev_run", "at least 0"]),
    "devices 0": (["--devices", "0"], ["cannot build the Trainer", "devices"]),
    "devices -1": (["--devices", "-1"], ["cannot build the Trainer", "devices"]),
    "devices abc": (["--devices", "abc"], ["cannot build the Trainer", "devices"]),
    "num_nodes 0": (["--num_nodes", "0"], ["--num_nodes", "at least 1"]),
    "accelerator tpu": (["--accelerator", "tpu"], ["cannot build the Trainer from these flags"]),
    "precision bogus": (["--precision", "bogus"], ["cannot build the Trainer from these flags"]),
    "strategy bogus": (["--strategy", "bogus"], ["cannot build the Trainer from these flags"]),
    "old --log-interval 0": (["--log-interval", "0"], ["--log-interval", "at least 1"]),
    "old --gamma abc": (["--gamma", "abc"], ["--gamma", "invalid"]),
    "unknown flag": (["--no_such_flag"], ["unrecognized arguments"]),
}
SAVE_ONLY = {
    "epochs 0": (["--epochs", "0"], ["--epochs", "at least 1"]),
    "epochs two": (["--epochs", "two"], ["--epochs", "invalid"]),
    "lr nan": (["--lr", "nan"], ["--lr", "above 0"]),
    "lr 0": (["--lr", "0"], ["--lr", "above 0"]),
    "val_size 0": (["--val_size", "0"], ["--val_size", "at least 1"]),
    "val_size of all images": (["--val_size", "3000"], ["--val_size", "no training images"]),
    "limit_train_batches 0": (["--limit_train_batches", "0"], ["--limit_train_batches", "at least 1"]),
    "limit_val_batches 0": (["--limit_val_batches", "0"], ["--limit_val_batches", "at least 1"]),
    "limit_val_batches 1.5": (["--limit_val_batches", "1.5"], ["--limit_val_batches", "above 0 and at most 1"]),
    "every_n_epochs 0": (["--every_n_epochs", "0"], ["--every_n_epochs", "at least 1"]),
    "save_top_k -2": (["--save_top_k", "-2"], ["--save_top_k", "-1 (keep all)"]),
    "resume and overwrite": (["--resume"], ["--resume", "--overwrite", "one of them"]),
}
LOAD_ONLY = {
    "num_images 0": (["--num_images", "0"], ["--num_images", "at least 1"]),
    "pick bogus": (["--pick", "bogus"], ["--pick", "invalid choice"]),
    "old --load_model, missing": (["--load_model", "missing.ckpt"], ["--load_model", "no such file"]),
    "--load_model and --ckpt differ": (["--load_model", "{net}", "--ckpt", "{other}"], ["--load_model", "one of them"]),
    "--ckpt and --ckpt_dir": (["--ckpt", "{net}", "--ckpt_dir", "{bad}"], ["not both"]),
}
if not torch.cuda.is_available():  # on a GPU machine this is a valid flag
    FLAG_CASES["accelerator gpu"] = (["--accelerator", "gpu"], ["cannot build the Trainer from these flags"])
CASES = [("save", name) for name in [*FLAG_CASES, *SAVE_ONLY]] + [("load", name) for name in [*FLAG_CASES, *LOAD_ONLY]]


@pytest.mark.parametrize("script, case", CASES)
def test_impossible_flags_give_one_clear_error(script, case, scripts, tmp_path, mnist_dir, capsys):
    """--overwrite over an earlier run, then a flag the script cannot run with: refused before any
    work, and the earlier run's folder exactly as it was (issue 11: it used to be emptied)."""
    flags, phrases = {**FLAG_CASES, **SAVE_ONLY, **LOAD_ONLY}[case]
    out = earlier_run(tmp_path / "run")
    bad = tmp_path / "bad"
    # A plain state_dict of the network, for check_point_load to get past its file checks.
    paths = {"net": write(bad / "net.pt", scripts[1].MNISTConvNet().state_dict()),
             "other": write(bad / "other.pt", scripts[1].MNISTConvNet().state_dict()), "bad": bad}
    flags = [flag.format(**paths) for flag in flags]
    before = snapshot(tmp_path)
    if script == "save":
        argv = [*TINY, "--data_dir", mnist_dir, "--output_dir", out, *flags, "--overwrite"]
    else:
        ckpt = [] if {"--ckpt", "--load_model"} & set(flags) else ["--ckpt", paths["net"]]
        argv = ["--data_dir", mnist_dir, "--output_dir", tmp_path / "loaded", *ckpt, *flags]
    main = scripts[0].main if script == "save" else scripts[1].main
    assert_clean_error(exit_of(main, argv, capsys), *phrases)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("script", ["save", "load"])
@pytest.mark.parametrize("damage, phrases", [
    ("labels", ["3000 train images but 2999 train labels", "copy the four raw"]),
    ("truncated", ["t10k-images-idx3-ubyte", "damaged or cut short"]),
    ("empty", ["MNIST is not in", "could not be downloaded", "PATH_DATASETS"]),
])
def test_broken_or_missing_data_is_named(script, damage, phrases, scripts, tmp_path, mnist_dir, capsys):
    data = broken_data(mnist_dir, tmp_path / "data", damage)
    out = earlier_run(tmp_path / "run")
    net = write(tmp_path / "net.pt", scripts[1].MNISTConvNet().state_dict())
    before = snapshot(tmp_path)
    if script == "save":
        result = exit_of(scripts[0].main, [*TINY, "--data_dir", data, "--output_dir", out, "--overwrite"], capsys)
    else:
        result = exit_of(scripts[1].main, ["--data_dir", data, "--ckpt", net, "--output_dir", tmp_path / "o"], capsys)
    assert_clean_error(result, *phrases)
    assert snapshot(tmp_path) == before  # offline: not even an empty MNIST/raw left behind


@pytest.mark.parametrize("script", ["save", "load"])
def test_an_output_dir_that_is_a_file_is_refused(script, scripts, tmp_path, mnist_dir, capsys):
    (tmp_path / "taken").write_text("not a folder")
    before = snapshot(tmp_path)
    main = scripts[0].main if script == "save" else scripts[1].main
    result = exit_of(main, [*(TINY if script == "save" else ()), "--data_dir", mnist_dir,
                            "--output_dir", tmp_path / "taken" / "run"], capsys)
    assert_clean_error(result, "taken", "is a file")
    assert snapshot(tmp_path) == before


def test_a_checkpoints_path_that_is_a_file_is_refused(scripts, tmp_path, mnist_dir, capsys):
    write(tmp_path / "run" / "checkpoints", b"not a folder")
    before = snapshot(tmp_path)
    result = exit_of(scripts[0].main, [*TINY, "--data_dir", mnist_dir, "--output_dir", tmp_path / "run"], capsys)
    assert_clean_error(result, "checkpoints", "not a folder this run can write")
    assert snapshot(tmp_path) == before


def test_a_full_disk_keeps_the_earlier_run_and_leaves_no_partial_file(scripts, tmp_path, mnist_dir, capsys,
                                                                      monkeypatch):
    """--overwrite, then the disk fills up at the first checkpoint: one line, exit 2, and the earlier
    run's checkpoints back in place, whole (issue 11: the folder used to be emptied first)."""
    out = earlier_run(tmp_path / "run")
    before = snapshot(out / "checkpoints")

    def full_disk(obj, file):  # torch.save that gets half-way, as on a full filesystem
        file.write(b"PK\x03\x04" + bytes(10_000))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    result = exit_of(scripts[0].main, [*TINY, "--data_dir", mnist_dir, "--output_dir", out, "--overwrite"], capsys)
    assert_clean_error(result, "cannot write", "No space left on device", "untouched")
    assert "interrupted" not in result.out  # a full disk is not a Ctrl-C
    assert snapshot(out / "checkpoints") == before  # no .partial, no hidden folder, every file as it was


def test_a_killed_overwrite_gets_the_earlier_run_back_at_the_next_start(scripts, tmp_path, mnist_dir, capsys):
    """SIGKILL during an --overwrite run's first epoch leaves the earlier run in a hidden folder
    and a first file of the new one; the next start puts the earlier run back."""
    out = earlier_run(tmp_path / "run")
    folder = out / "checkpoints"
    before = snapshot(folder)
    aside = folder / scripts[0].EARLIER_RUN
    aside.mkdir()
    for path in folder.glob("*.ckpt"):
        path.rename(aside / path.name)
    write(folder / "epoch=00-valid_acc=0.1000.ckpt", {"epoch": 0, "state_dict": {}})
    write(folder / ".last.ckpt.partial", b"PK\x03\x04")
    # A fresh run in that folder: refused as usual, because the earlier run's checkpoints are back.
    result = exit_of(scripts[0].main, [*TINY, "--data_dir", mnist_dir, "--output_dir", out], capsys)
    assert_clean_error(result, "already holds 4 checkpoints", "--resume", "--overwrite")
    assert {name: value for name, value in snapshot(folder).items() if not name.endswith(".partial")} == before


def test_resume_hint_is_the_same_command_with_resume(scripts):
    class Saved:
        last_model_path = "checkpoints/last.ckpt"

    hint = scripts[0].resume_hint(["--epochs", "4", "--overwrite", "--output_dir", "my run"], Saved())()
    assert hint.endswith("check_point_save.py --epochs 4 --output_dir 'my run' --resume")
    for argv in (["--resume", "old.ckpt", "--epochs", "4"], ["--epochs", "4", "--res"], ["--resume=old.ckpt", "--epochs=4"],
                 ["--over", "--epochs", "4"]):
        assert scripts[0].resume_hint(argv, Saved())().split("check_point_save.py ")[1] in (
            "--epochs 4 --resume", "--epochs=4 --resume"), argv
    Saved.last_model_path = ""  # stopped before its first checkpoint: nothing to resume
    hint = scripts[0].resume_hint(["--epochs", "4", "--overwrite"], Saved())()
    assert "saved no checkpoint yet" in hint and hint.endswith("check_point_save.py --epochs 4 --overwrite")


def test_original_tutorial_flags_are_read_and_say_what_they_do(scripts, capsys, tmp_path):
    save, load = scripts
    args = save.parse_args(["--no-cuda", "--test-batch-size", "1000", "--gamma", "0.7", "--log-interval", "10",
                            "--test", "--save_model"])
    notes = capsys.readouterr().err
    assert args.accelerator == "cpu" and args.eval_batch_size == 1000 and args.batch_size == 128
    for flag, phrase in (("--no-cuda", "--accelerator cpu"), ("--gamma", "one-cycle"), ("--log-interval", "once per epoch"),
                         ("--test", "always ends with a test"), ("--save_model", "always saves checkpoints")):
        assert f"note: {flag} (from the original tutorial): " in notes and phrase in notes, (flag, notes)
    assert len(notes.splitlines()) == 5

    net = write(tmp_path / "net.pt", load.MNISTConvNet().state_dict())
    args = load.parse_args(["--load_model", str(net), "--no-cuda", "--test", "--gamma", "0.7", "--log-interval", "10",
                            "--test-batch-size", "1000"])
    notes = capsys.readouterr().err
    assert args.ckpt == str(net) and args.accelerator == "cpu" and args.eval_batch_size == 1000
    assert "always tests the checkpoint it loads" in notes and notes.count("nothing is trained here") == 2
    assert save.parse_args([]).eval_batch_size == load.parse_args([]).eval_batch_size == 128
    assert capsys.readouterr().err == ""  # no note without an old flag


def test_structure_flags_print_and_exit(scripts, tmp_path, capsys):
    save, load = scripts
    assert save.main(["--named_modules", "--named-parameters", "--output_dir", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out
    assert "model.features.0" in printed and "Conv2d" in printed and "(10, 128)" in printed
    # check_point_load prints the model it loaded: here one with 64 hidden units.
    net = write(tmp_path / "net.pt", load.MNISTConvNet(hidden_units=64).state_dict())
    checkpoint = write(tmp_path / "wide.ckpt", {
        "epoch": 0, "pytorch-lightning_version": "2.6.6", "hyper_parameters": {"hidden_units": 64},
        "state_dict": {f"model.{name}": tensor for name, tensor in torch.load(net).items()}})
    assert load.main(["--ckpt", str(checkpoint), "--named_parameters", "--output_dir", str(tmp_path / "l")]) == 0
    printed = capsys.readouterr().out
    assert "model.classifier.4.weight" in printed and "(10, 64)" in printed
    assert not (tmp_path / "s").exists() and not (tmp_path / "l").exists()


def checkpoint_holding(network, **changes) -> dict:
    """A checkpoint as Lightning writes one for MNISTClassifier, with `changes` made to it."""
    checkpoint = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.6.6",
                  "state_dict": {f"model.{name}": tensor for name, tensor in network.state_dict().items()},
                  "hyper_parameters": {"hidden_units": 128, "dropout": 0.25, "lr": 0.01}}
    return checkpoint | changes


# Files that torch.load(weights_only=True) reads, holding data of the wrong shape: (content, phrases).
WRONG_SHAPES = {
    "state_dict with integer keys": (lambda net: checkpoint_holding(net, state_dict={0: torch.zeros(3)}),
                                     ["state_dict", "layer names to tensors"]),
    "state_dict a list": (lambda net: checkpoint_holding(net, state_dict=[torch.zeros(3)]), ["not a checkpoint"]),
    "a tensor replaced by a float": (
        lambda net: checkpoint_holding(net, state_dict={"model.classifier.1.weight": 0.5}),
        ["state_dict", "layer names to tensors"]),
    "a plain state_dict with integer keys": (lambda net: dict(enumerate(net.state_dict().values())),
                                             ["not a checkpoint"]),
    "hyper_parameters a list": (lambda net: checkpoint_holding(net, hyper_parameters=[128]),
                                ["hyper_parameters are a list"]),
    "hyper_parameters a string": (lambda net: checkpoint_holding(net, hyper_parameters="hidden_units=128"),
                                  ["hyper_parameters are a str"]),
    "hidden_units 1e9": (lambda net: checkpoint_holding(net, hyper_parameters={"hidden_units": 10**9}),
                         ["hidden_units 1000000000", "1 to 65536"]),
    "hidden_units -1": (lambda net: checkpoint_holding(net, hyper_parameters={"hidden_units": -1}), ["hidden_units -1"]),
    "hidden_units abc": (lambda net: checkpoint_holding(net, hyper_parameters={"hidden_units": "abc"}),
                         ["hidden_units 'abc'"]),
    "hidden_units 1.5": (lambda net: checkpoint_holding(net, hyper_parameters={"hidden_units": 1.5}),
                         ["hidden_units 1.5"]),
    "dropout abc": (lambda net: checkpoint_holding(net, hyper_parameters={"dropout": "abc"}), ["dropout 'abc'"]),
    "meta tensors": (lambda net: checkpoint_holding(net.to("meta")), ["could not load"]),
}


@pytest.mark.parametrize("case", WRONG_SHAPES)
def test_checkpoints_of_the_wrong_shape_are_refused(case, scripts, tmp_path, mnist_dir, capsys):
    content, phrases = WRONG_SHAPES[case]
    path = write(tmp_path / "bad.ckpt", content(scripts[1].MNISTConvNet()))
    before = snapshot(tmp_path)
    result = exit_of(scripts[1].main, ["--data_dir", mnist_dir, "--ckpt", path, "--output_dir", tmp_path / "o"], capsys)
    assert_clean_error(result, *phrases)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flags, phrases", [
    (["--limit_test_batches", "1e-9"], ["--limit_test_batches 1e-09", "less than one batch"]),
    (["--batch_size", "100000000"], ["a batch of 100000000", "at most 3000"]),
])
def test_load_flags_that_do_not_fit_the_data(flags, phrases, scripts, tmp_path, mnist_dir, capsys):
    net = write(tmp_path / "net.pt", scripts[1].MNISTConvNet().state_dict())
    result = exit_of(scripts[1].main, ["--data_dir", mnist_dir, "--ckpt", net, "--output_dir", tmp_path / "o",
                                       *flags], capsys)
    assert_clean_error(result, *phrases)


@pytest.mark.parametrize("flags, phrases", [
    (["--lr", "1e308"], ["--lr 1e+308", "too large"]),
    (["--limit_train_batches", "0.000001"], ["--limit_train_batches 1e-06", "less than one batch"]),
    (["--limit_val_batches", "0.01"], ["--limit_val_batches 0.01", "less than one batch"]),
    (["--batch_size", "100000000"], ["a batch of 100000000"]),
])
def test_save_flags_that_do_not_fit_the_data(flags, phrases, scripts, tmp_path, mnist_dir, capsys):
    out = earlier_run(tmp_path / "run")
    before = snapshot(tmp_path)
    result = exit_of(scripts[0].main, [*TINY, "--data_dir", mnist_dir, "--output_dir", out, "--overwrite", *flags],
                     capsys)
    assert_clean_error(result, *phrases)
    assert snapshot(tmp_path) == before
