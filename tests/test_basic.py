"""Basic_usage_of_lightning.py end to end, driven only through its flags."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import QUICK, assert_clean_error, load_script, printed_accuracy, run_in, script_env

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
    result = run_script(SCRIPT, "--data_dir", mnist_dir, "--test", "--batch_size", "250", check=True)
    assert printed_accuracy(result.out) < 0.3


def test_ddp_on_two_cpu_processes(run_script, mnist_dir):
    result = run_script(SCRIPT, "--data_dir", mnist_dir, *QUICK, "--accelerator", "cpu",
                        "--devices", "2", "--strategy", "ddp", check=True)  # not 134: the process group is closed
    assert printed_accuracy(result.out) > 0.5
    assert result.out.count("test accuracy:") == 1  # only rank 0 reports


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


@pytest.mark.parametrize("flags, phrases", [
    (["--epochs", "0"], ["--epochs", "at least 1"]),
    (["--batch-size", "0"], ["--batch_size", "at least 1"]),
    (["--load_model", "missing.pt"], ["missing.pt", "no such file"]),
    (["--accelerator", "tpu"], ["cannot build the Trainer from these flags"]),
    (["--val_size", "3000"], ["--val_size", "no training images"]),
])
def test_impossible_flags_give_one_clear_error(run_script, mnist_dir, flags, phrases):
    assert_clean_error(run_script(SCRIPT, "--data_dir", mnist_dir, "--val_size", "500", *flags), *phrases)


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
    result = run_script(SCRIPT, "--test", "--batch_size", "250",
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
