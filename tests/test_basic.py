"""Basic_usage_of_lightning.py end to end, driven only through its flags."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import (QUICK, ROOT, assert_clean_error, broken_data, exit_of, interrupt, load_script, printed_accuracy,
                      run_in, script_env)

SCRIPT = "Basic_usage_of_lightning.py"


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """One short training run that saves and exports; several tests read what it wrote."""
    workdir = tmp_path_factory.mktemp("basic")
    result = run_in(workdir, SCRIPT, "--data_dir", mnist_dir, *QUICK, "--save_model", "--export", "onnx",
                    check=True)
    return workdir / "outputs" / "Basic_usage_of_lightning", result.out


def test_training_learns_and_writes_every_artifact(trained):
    out, output = trained
    assert printed_accuracy(output) > 0.6  # chance is 0.1
    for name in ("history.csv", "loss.png", "acc.png", "mnist_classifier.pt", "mnist_classifier.onnx",
                 "checkpoints/best.ckpt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list(out.glob("csv_logs/version_*/metrics.csv"))
    assert list(out.glob("tb_logs/version_*/events.out.tfevents.*"))
    history = pd.read_csv(out / "history.csv", index_col="epoch")
    assert list(history.columns) == ["train_loss", "valid_loss", "train_acc", "valid_acc"]
    assert len(history) == 1 and not history.isna().any().any()
    assert history["valid_acc"].iloc[0] > 0.6


@pytest.mark.parametrize("weights", ["mnist_classifier.pt", "checkpoints/best.ckpt"])
def test_saved_weights_reload_to_the_same_accuracy(trained, run_script, mnist_dir, weights):
    out, output = trained
    reloaded = run_script(SCRIPT, "--data_dir", mnist_dir, "--load_model", out / weights,
                          "--batch_size", "64", check=True)
    assert printed_accuracy(reloaded.out) == printed_accuracy(output)


def test_onnx_export_agrees_with_pytorch(trained, mnist_dir):
    onnxruntime = pytest.importorskip("onnxruntime")
    out, _ = trained
    network = load_script(SCRIPT).MNISTConvNet()
    network.load_state_dict(torch.load(out / "mnist_classifier.pt", weights_only=True))
    images = torch.randn(7, 1, 28, 28)  # a batch size the export never saw: the axis is dynamic
    session = onnxruntime.InferenceSession(str(out / "mnist_classifier.onnx"))
    onnx_logits = session.run(None, {"image": images.numpy()})[0]
    with torch.no_grad():
        torch_logits = network.eval()(images).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


def test_same_seed_gives_the_same_metrics(trained, run_script, mnist_dir, tmp_path):
    out, _ = trained
    run_script(SCRIPT, "--data_dir", mnist_dir, *QUICK, check=True)
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"),
                                  pd.read_csv(tmp_path / "outputs" / "Basic_usage_of_lightning" / "history.csv"))


def test_untrained_model_scores_near_chance(run_script, mnist_dir):
    result = run_script(SCRIPT, "--data_dir", mnist_dir, "--skip_training", "--batch_size", "250", check=True)
    assert printed_accuracy(result.out) < 0.3


def test_ddp_on_two_cpu_processes(run_script, mnist_dir):
    result = run_script(SCRIPT, "--data_dir", mnist_dir, *QUICK, "--accelerator", "cpu",
                        "--devices", "2", "--strategy", "ddp", check=True)  # not 134: the process group is closed
    assert printed_accuracy(result.out) > 0.5
    assert result.out.count("test accuracy:") == 1  # only rank 0 reports


def test_datamodule_gives_the_same_split_and_metrics(trained, run_script, mnist_dir, tmp_path):
    """MNISTDataModule and the LightningModule's own hooks: the same split, the same numbers."""
    script = load_script(SCRIPT)
    module = script.MNISTClassifier(data_dir=str(mnist_dir), val_size=500, seed=42)
    datamodule = script.MNISTDataModule(data_dir=str(mnist_dir), val_size=500, seed=42)
    module.setup("fit")
    datamodule.setup("fit")
    assert module.valid_set.indices == datamodule.valid_set.indices
    assert len(datamodule.train_set) == 2500 and len(set(datamodule.valid_set.indices)) == 500
    out, output = trained
    result = run_script(SCRIPT, "--data_dir", mnist_dir, *QUICK, "--datamodule", check=True)
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"),
                                  pd.read_csv(tmp_path / "outputs" / "Basic_usage_of_lightning" / "history.csv"))
    assert printed_accuracy(result.out) == printed_accuracy(output)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_node_rehearsal_on_one_machine(mnist_dir, tmp_path):
    """The README's rehearsal: two processes as two nodes on loopback, one CPU device each."""
    port = free_port()
    command = [sys.executable, str(ROOT / SCRIPT), "--data_dir", str(mnist_dir), *QUICK,
               "--accelerator", "cpu", "--devices", "1", "--strategy", "ddp", "--num_nodes", "2"]
    nodes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=script_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(rank)))
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "GLOBAL_RANK: 0" in outputs[0] and "GLOBAL_RANK: 1" in outputs[1]  # two ranks, one world
    assert outputs[0].count("test accuracy:") == 1 and "test accuracy:" not in outputs[1]  # rank 0 reports
    assert printed_accuracy(outputs[0]) > 0.5
    out = tmp_path / "outputs" / "Basic_usage_of_lightning"
    assert [path.name for path in (out / "csv_logs").iterdir()] == ["version_0"]  # one writer


def test_rehearsal_with_its_port_in_use_fails_at_once(mnist_dir, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = script_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(taken.getsockname()[1]), NODE_RANK="0")
        result = run_in(tmp_path, SCRIPT, "--data_dir", mnist_dir, *QUICK, "--accelerator", "cpu", "--devices", "1",
                        "--strategy", "ddp", "--num_nodes", "2", env=env, timeout=120)
    assert_clean_error(result, "cannot host the rendezvous", "pick another MASTER_PORT")


@pytest.mark.slow
def test_sigterm_during_training_exits_143_and_tests_nothing(mnist_dir, tmp_path):
    """A scheduler's stop: not a success (0), no test of a half-trained model, the best file loads."""
    out = tmp_path / "outputs" / "Basic_usage_of_lightning"
    result = interrupt(tmp_path, SCRIPT, "--data_dir", mnist_dir, "--epochs", "50", "--batch_size", "64",
                       "--val_size", "500", when=(out / "checkpoints" / "best.ckpt").exists)
    output = result.out
    assert result.returncode == 143, output[-2000:]
    assert "interrupted by SIGTERM" in output and "nothing was tested" in output
    assert "test accuracy" not in output and "Traceback" not in output
    checkpoint = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["epoch"] < 49
    assert not list((out / "checkpoints").glob(".*partial"))


def test_original_tutorial_flags_are_read_and_say_what_they_do(mnist_dir, tmp_path, monkeypatch, capsys):
    """The 1.x tutorial's flags: each mapped to its successor or answered with a note, never silent."""
    script = load_script(SCRIPT)
    args = script.parse_args(["--no-cuda", "--test-batch-size", "1000", "--gamma", "0.7", "--log-interval", "10",
                              "--test"])
    notes = capsys.readouterr().err
    assert args.accelerator == "cpu" and args.eval_batch_size == 1000 and args.batch_size == 128
    for flag, phrase in (("--no-cuda", "--accelerator cpu"), ("--gamma", "one-cycle"),
                         ("--log-interval", "once per epoch"), ("--test", "always ends with a test")):
        assert re.search(rf"^note: {flag} \(from the original tutorial\): .*{phrase}", notes, re.M), notes
    assert not hasattr(args, "gamma") and not hasattr(args, "test") and not hasattr(args, "log_interval")
    assert script.parse_args([]).eval_batch_size == 128  # default: the training batch size
    assert capsys.readouterr().err == ""  # no note without an old flag


def test_debug_flags_run_without_writing_logs(run_script, mnist_dir, tmp_path):
    run_script(SCRIPT, "--data_dir", mnist_dir, "--fast_dev_run", "--val_size", "500", check=True)
    assert not (tmp_path / "outputs" / "Basic_usage_of_lightning" / "csv_logs").exists()
    limited = run_script(SCRIPT, "--data_dir", mnist_dir, *QUICK, "--limit_train_batches", "6",
                         "--val_check_interval", "3", "--limit_test_batches", "2",
                         "--profiler", "simple", check=True)
    assert "Profiler Report" in limited.out
    metrics = pd.read_csv(next((tmp_path / "outputs" / "Basic_usage_of_lightning").glob("csv_logs/version_*/metrics.csv")))
    assert metrics["valid_acc"].notna().sum() == 2  # validated after batch 3 and batch 6


def test_structure_flags_print_and_exit(run_script):
    result = run_script(SCRIPT, "--named_modules", "--named-parameters", check=True)
    assert "model.features.0" in result.out and "Conv2d" in result.out
    assert "model.classifier.4.weight" in result.out and "(10, 128)" in result.out


def test_impossible_flags_give_one_clear_error_in_a_real_process(run_script, mnist_dir):
    """The whole path once as a user meets it: a fresh process, stderr, the exit code."""
    result = run_script(SCRIPT, "--data_dir", mnist_dir, "--val_size", "500", "--accelerator", "tpu")
    assert_clean_error(result, "cannot build the Trainer from these flags")


@pytest.mark.parametrize("flags, phrases", [
    (["--epochs", "0"], ["--epochs", "at least 1"]),
    (["--batch-size", "0"], ["--batch_size", "at least 1"]),
    (["--test-batch-size", "0"], ["--test-batch-size", "at least 1"]),  # the old spelling, the same error
    (["--epochs", "two"], ["--epochs", "invalid"]),
    (["--lr", "nan"], ["--lr", "above 0"]),
    (["--lr", "-1"], ["--lr", "above 0"]),
    (["--seed", "-1"], ["--seed", "between 0 and"]),
    (["--num_workers", "-2"], ["--num_workers", "at least 0"]),
    (["--limit_train_batches", "0"], ["--limit_train_batches", "at least 1"]),
    (["--limit_test_batches", "0"], ["--limit_test_batches", "at least 1"]),
    (["--limit_val_batches", "1.5"], ["--limit_val_batches", "above 0 and at most 1"]),
    (["--val_check_interval", "0"], ["--val_check_interval", "at least 1"]),
    (["--fast_dev_run", "-1"], ["--fast_dev_run", "at least 0"]),
    (["--devices", "0"], ["cannot build the Trainer", "devices"]),
    (["--devices", "-1"], ["cannot build the Trainer", "devices"]),
    (["--devices", "abc"], ["cannot build the Trainer", "devices"]),
    (["--num_nodes", "0"], ["--num_nodes", "at least 1"]),
    (["--export", "tflite"], ["--export", "invalid choice"]),
    (["--load_model", "missing.pt"], ["missing.pt", "no such file"]),
    (["--accelerator", "gpu"], ["cannot build the Trainer from these flags"]),
    (["--accelerator", "tpu"], ["cannot build the Trainer from these flags"]),
    (["--precision", "bogus"], ["cannot build the Trainer from these flags"]),
    (["--strategy", "bogus"], ["cannot build the Trainer from these flags"]),
    (["--val_size", "3000"], ["--val_size", "no training images"]),
    (["--num_nodes", "2"], ["MASTER_ADDR", "NODE_RANK"]),
    (["--no_such_flag"], ["unrecognized arguments"]),
    # Each valid alone, but not with the data or each other: refused before Lightning or torch fail.
    (["--lr", "1e308"], ["--lr 1e+308", "too large"]),
    (["--limit_train_batches", "0.000001"], ["--limit_train_batches 1e-06", "less than one batch"]),
    (["--limit_test_batches", "1e-9"], ["--limit_test_batches 1e-09", "less than one batch"]),
    (["--limit_val_batches", "0.01"], ["--limit_val_batches 0.01 of 4 val batches", "less than one batch"]),
    (["--val_check_interval", "100000"], ["--val_check_interval 100000", "training batches of an epoch"]),
    (["--limit_train_batches", "5", "--val_check_interval", "6"], ["--val_check_interval 6", "at most 5"]),
    (["--batch_size", "100000000"], ["a batch of 100000000", "at most 3000"]),
    (["--eval_batch_size", "100000000"], ["a batch of 100000000", "--eval_batch_size"]),
])
def test_impossible_flags_give_one_clear_error(mnist_dir, tmp_path, monkeypatch, capsys, flags, phrases):
    monkeypatch.chdir(tmp_path)
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    result = exit_of(load_script(SCRIPT).main, ["--data_dir", mnist_dir, "--val_size", "500", *flags], capsys)
    assert_clean_error(result, *phrases)
    assert not (tmp_path / "outputs").exists()  # refused before any work


@pytest.mark.parametrize("environment, phrases", [
    (dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="abc", NODE_RANK="0"), ["MASTER_PORT=abc", "not a port number"]),
    (dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="abc", NODE_RANK="7"), ["MASTER_PORT=abc", "not a port number"]),
    (dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29500", NODE_RANK="7"), ["NODE_RANK=7", "0 to 1"]),
    (dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29500", NODE_RANK="-1"), ["NODE_RANK=-1", "0 to 1"]),
    # Would wait for a rendezvous that can never happen, until killed.
    (dict(MASTER_ADDR="256.1.1.1", MASTER_PORT="29500", NODE_RANK="1"), ["MASTER_ADDR=256.1.1.1", "does not resolve"]),
])
def test_a_rendezvous_that_cannot_happen_is_refused_at_once(mnist_dir, tmp_path, monkeypatch, capsys, environment,
                                                             phrases):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    result = exit_of(load_script(SCRIPT).main, ["--data_dir", mnist_dir, "--val_size", "500", "--accelerator", "cpu",
                                               "--strategy", "ddp", "--num_nodes", "2"], capsys)
    assert_clean_error(result, *phrases)


def weights_of_the_wrong_shape(folder) -> dict:
    """Files that torch.load(weights_only=True) reads, holding something other than a state_dict."""
    good = load_script(SCRIPT).MNISTConvNet().state_dict()
    meta = load_script(SCRIPT).MNISTConvNet().to("meta").state_dict()
    contents = {
        "int_keys.pt": {i: tensor for i, tensor in enumerate(good.values())},
        "a_list.pt": list(good.values()),
        "a_float.pt": good | {"classifier.1.weight": 0.5},
        "ckpt_int_keys.ckpt": {"epoch": 0, "state_dict": {0: torch.zeros(1)}},
        "ckpt_list.ckpt": {"epoch": 0, "state_dict": [torch.zeros(1)]},
        "meta.pt": meta,
    }
    for name, content in contents.items():
        torch.save(content, folder / name)
    return {name: folder / name for name in contents}


def test_weights_of_the_wrong_shape_are_refused(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, path in weights_of_the_wrong_shape(tmp_path).items():
        result = exit_of(load_script(SCRIPT).main, ["--data_dir", mnist_dir, "--load_model", path], capsys)
        assert_clean_error(result, name, "weights")


def test_export_after_training_in_float64(mnist_dir, tmp_path, monkeypatch, capsys, one_thread):
    """--precision 64-true trains in float64; the exports take float32 images, so they are made in float32."""
    pytest.importorskip("onnxscript")
    monkeypatch.chdir(tmp_path)
    assert load_script(SCRIPT).main(["--data_dir", str(mnist_dir), "--skip_training", "--precision", "64-true",
                                     "--limit_test_batches", "1", "--export", "onnx"]) == 0
    assert (tmp_path / "outputs" / "Basic_usage_of_lightning" / "mnist_classifier.onnx").stat().st_size > 0


def test_onnx_export_without_onnxscript_is_one_line(mnist_dir, tmp_path):
    """torch's ONNX exporter imports onnxscript at export time: without it, one line and no .onnx file.
    A fresh process whose path puts first an onnxscript that cannot be imported, as when it is missing."""
    (tmp_path / "blocked" / "onnxscript").mkdir(parents=True)
    (tmp_path / "blocked" / "onnxscript" / "__init__.py").write_text('raise ImportError("No module named onnxscript")\n')
    result = run_in(tmp_path, SCRIPT, "--data_dir", mnist_dir, "--skip_training", "--limit_test_batches", "1",
                    "--export", "onnx", env=script_env(PYTHONPATH=str(tmp_path / "blocked")))
    assert_clean_error(result, "--export onnx failed", "pip install onnx onnxscript", "onnxscript")
    assert not list(tmp_path.rglob("*.onnx"))


def test_an_output_dir_that_is_a_file_is_refused(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("not a folder")
    result = exit_of(load_script(SCRIPT).main, ["--data_dir", mnist_dir, "--output_dir", "taken/run"], capsys)
    assert_clean_error(result, "taken", "is a file")
    assert (tmp_path / "taken").read_text() == "not a folder"


@pytest.mark.parametrize("damage, phrases", [
    ("labels", ["3000 train images but 2999 train labels", "copy the four raw"]),
    ("truncated", ["t10k-images-idx3-ubyte", "damaged or cut short"]),
])
def test_broken_mnist_files_are_named(mnist_dir, tmp_path, monkeypatch, capsys, damage, phrases):
    broken = broken_data(mnist_dir, tmp_path / "data", damage)
    monkeypatch.chdir(tmp_path)
    assert_clean_error(exit_of(load_script(SCRIPT).main, ["--data_dir", broken], capsys), *phrases)


def test_offline_download_failure_leaves_no_empty_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    result = exit_of(load_script(SCRIPT).main, ["--data_dir", tmp_path / "new" / "datasets", "--output_dir",
                                               tmp_path / "out"], capsys)
    assert_clean_error(result, "MNIST is not in", "PATH_DATASETS")
    assert not (tmp_path / "new").exists()


def test_unreadable_or_foreign_weights_are_refused_untouched(run_script, mnist_dir, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2048))
    assert_clean_error(run_script(SCRIPT, "--data_dir", mnist_dir, "--load_model", garbage),
                       "cannot read", "garbage.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, foreign)
    before = foreign.read_bytes()
    assert_clean_error(run_script(SCRIPT, "--data_dir", mnist_dir, "--load_model", foreign),
                       "does not hold weights for MNISTConvNet")
    assert foreign.read_bytes() == before


def test_offline_without_data_says_where_to_put_the_files(run_script, tmp_path):
    result = run_script(SCRIPT, "--data_dir", tmp_path / "nowhere")
    assert_clean_error(result, "MNIST is not in", "train-images-idx3-ubyte", "PATH_DATASETS")


def test_data_dir_defaults_to_path_datasets(run_script, mnist_dir):
    result = run_script(SCRIPT, "--skip_training", "--batch_size", "250",
                        env=script_env(PATH_DATASETS=str(mnist_dir)), check=True)
    # It read the synthetic set there: the labels it prints are the first of that test file's.
    labels = list((mnist_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()[8:20])
    assert f"true labels  {labels}" in result.out, result.out[-2000:]


REAL_MNIST = os.environ.get("PATH_DATASETS")


@pytest.mark.skipif(not (REAL_MNIST and Path(REAL_MNIST, "MNIST", "raw").is_dir()),
                    reason="real MNIST not found: set PATH_DATASETS to a folder holding MNIST/raw")
def test_real_mnist_one_epoch(run_script):
    result = run_script(SCRIPT, "--data_dir", REAL_MNIST, "--epochs", "1", check=True)
    assert printed_accuracy(result.out) > 0.98
