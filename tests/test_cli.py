"""cli_lightning.py: LightningCLI's subcommands, the configs in configs/, the saved config.yaml, resuming,
the comparison with Basic_usage_of_lightning.py and bad input. Runs are in-process (main(argv)) at
tiny settings: importing Lightning again in a fresh process costs more than these trainings."""
import contextlib
import io
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import ROOT, assert_clean_error, broken_data, exit_of, load_script, printed_accuracy

SCRIPT = "cli_lightning.py"
# The tests' QUICK flags of the other scripts, as CLI keys: one epoch, 2500 train / 500 validation images.
QUICK = ["--data.batch_size", "64", "--data.eval_batch_size", "64", "--data.val_size", "500",
         "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]
TINY = [*QUICK, "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
        "--trainer.limit_test_batches", "2", "--trainer.limit_predict_batches", "2"]
# main(argv) inside pytest: LightningCLI warns that sys.argv (pytest's) holds arguments too.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
CONFIGS = sorted(path.name for path in (ROOT / "configs").glob("*.yaml"))


def run_cli(argv, folder: Path) -> str:
    """main(argv) in folder, one thread; returns what it printed. A SystemExit goes on up.
    Torch's thread count and deterministic mode are put back after it, since a module-scoped
    fixture calls this too (conftest's restore_torch_determinism covers only test functions)."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    printed = io.StringIO()
    try:
        with contextlib.chdir(folder), contextlib.redirect_stdout(printed):
            load_script(SCRIPT).main([str(arg) for arg in argv])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    return printed.getvalue()


def table_value(printed: str, metric: str) -> float:
    """A value from the table Lightning prints after validate and test."""
    match = re.search(rf"\b{metric}\b\s+([0-9.]+)", printed)
    assert match, printed[-2000:]
    return float(match.group(1))


@pytest.fixture(scope="module")
def fitted(mnist_dir, tmp_path_factory):
    """One `fit` at the QUICK settings; several tests read what it wrote."""
    folder = tmp_path_factory.mktemp("cli_fit")
    printed = run_cli(["fit", "--data.data_dir", mnist_dir, *QUICK], folder)
    run = folder / "outputs" / "cli_lightning" / "lightning_logs" / "version_0"
    return SimpleNamespace(folder=folder, run=run, printed=printed, accuracy=printed_accuracy(printed))


def test_fit_learns_saves_its_config_and_tests_the_best_checkpoint(fitted, mnist_dir):
    assert fitted.accuracy > 0.6  # chance is 0.1
    best = fitted.run / "checkpoints" / "best.ckpt"
    assert f"(of {best.relative_to(fitted.folder)})" in fitted.printed
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)  # plain hyperparameters only
    # The links: data.* set once reached the model's own arguments too.
    assert {key: checkpoint["hyper_parameters"][key] for key in ("data_dir", "batch_size", "val_size", "seed")} == {
        "data_dir": str(mnist_dir), "batch_size": 64, "val_size": 500, "seed": 42}
    config = yaml.safe_load((fitted.run / "config.yaml").read_text())
    assert config["data"]["data_dir"] == str(mnist_dir) and config["trainer"]["max_epochs"] == 1
    assert config["seed_everything"] == 42 and config["trainer"]["deterministic"] is True
    assert list(fitted.run.glob("events.out.tfevents.*"))


def test_fit_reaches_basics_accuracy_with_the_same_settings(fitted, mnist_dir, tmp_path, monkeypatch, capsys,
                                                          one_thread):
    """Same network, data, seed and schedule: the CLI and Basic's argparse flags give the same model."""
    monkeypatch.chdir(tmp_path)
    load_script("Basic_usage_of_lightning.py").main(
        ["--data_dir", str(mnist_dir), "--epochs", "1", "--batch_size", "64", "--val_size", "500"])
    assert printed_accuracy(capsys.readouterr().out) == fitted.accuracy


def test_the_saved_config_repeats_the_run(fitted):
    printed = run_cli(["fit", "--config", fitted.run / "config.yaml"], fitted.folder)
    assert printed_accuracy(printed) == fitted.accuracy
    assert (fitted.run.parent / "version_1" / "config.yaml").is_file()  # the new run's, beside it


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_subcommands_use_the_checkpoint(fitted, subcommand):
    best = fitted.run / "checkpoints" / "best.ckpt"
    printed = run_cli([subcommand, "--config", fitted.run / "config.yaml", "--ckpt_path", best], fitted.folder)
    if subcommand == "test":
        assert round(table_value(printed, "test_acc"), 4) == fitted.accuracy
    elif subcommand == "validate":
        assert table_value(printed, "valid_acc") > 0.6
    else:
        predicted = re.search(r"first predictions \[(.*)\]\n\s+true labels  \[(.*)\]", printed)
        assert predicted, printed[-2000:]
        pairs = zip(predicted[1].split(","), predicted[2].split(","))
        assert sum(p == t for p, t in pairs) >= 6  # of 12: far above chance


def test_print_config_round_trip(fitted, mnist_dir, tmp_path):
    """fit --print_config writes every key; fit --config that file is the same run, same accuracy."""
    printed = printed_config(["fit", "--data.data_dir", mnist_dir, *QUICK, "--print_config"], tmp_path)
    config = yaml.safe_load(printed)
    assert {"seed_everything", "trainer", "model", "data", "ckpt_path"} <= set(config)
    assert "data_dir" not in config["model"]  # a link target: set through data.data_dir only
    (tmp_path / "printed.yaml").write_text(printed)
    assert printed_accuracy(run_cli(["fit", "--config", "printed.yaml"], tmp_path)) == fitted.accuracy


@pytest.mark.parametrize("config", CONFIGS)
def test_each_config_runs(config, mnist_dir, tmp_path):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    printed = run_cli(["fit", "--config", f"configs/{config}", "--data.data_dir", mnist_dir, *TINY], tmp_path)
    assert 0 <= printed_accuracy(printed) <= 1
    out = tmp_path / "outputs" / "cli_lightning"
    saved = list(out.glob("*/version_0/config.yaml"))
    assert len(saved) == 1
    assert (saved[0].parent / "checkpoints" / "best.ckpt").is_file()
    if "callbacks" in config:
        metrics = (out / "csv_logs" / "version_0" / "metrics.csv").read_text()
        assert "lr-AdamW" in metrics.splitlines()[0]  # LearningRateMonitor
        assert list(out.glob("tb_logs/version_0/events.out.tfevents.*"))
        assert (out / "csv_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_a_config_plus_flags(mnist_dir, tmp_path):
    """A flag after --config overrides the config's value; the saved config.yaml says which won."""
    printed = run_cli(["fit", "--config", ROOT / "configs" / "cli_defaults.yaml", "--data.data_dir", mnist_dir,
                       *TINY, "--model.lr", "0.002", "--trainer.max_epochs", "2"], tmp_path)
    assert 0 <= printed_accuracy(printed) <= 1
    config = yaml.safe_load(next(tmp_path.glob("outputs/cli_lightning/*/version_0/config.yaml")).read_text())
    assert config["model"]["lr"] == 0.002 and config["trainer"]["max_epochs"] == 2
    assert config["model"]["hidden_units"] == 128  # from the config file


def test_fit_resumes_from_a_checkpoint(mnist_dir, tmp_path):
    """A 2-epoch run that keeps every epoch; a second fit from epoch 0's checkpoint trains only epoch 1."""
    every_epoch = ["--trainer.callbacks", "ModelCheckpoint", "--trainer.callbacks.filename", "{epoch}",
                   "--trainer.callbacks.save_top_k", "-1", "--trainer.callbacks.monitor", "valid_acc",
                   "--trainer.callbacks.mode", "max"]
    argv = ["fit", "--data.data_dir", mnist_dir, *TINY, "--trainer.max_epochs", "2", *every_epoch]
    run_cli(argv, tmp_path)
    runs = tmp_path / "outputs" / "cli_lightning" / "lightning_logs"
    assert sorted(p.name for p in (runs / "version_0" / "checkpoints").iterdir()) == ["epoch=0.ckpt", "epoch=1.ckpt"]
    run_cli([*argv, "--ckpt_path", runs / "version_0" / "checkpoints" / "epoch=0.ckpt"], tmp_path)
    resumed = sorted(p.name for p in (runs / "version_1" / "checkpoints").iterdir())
    assert resumed == ["epoch=1.ckpt"]  # epoch 0 was not trained again
    final = torch.load(runs / "version_1" / "checkpoints" / "epoch=1.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 1 and final["global_step"] == 6  # 3 steps restored + 3 new


def test_resuming_past_the_schedule_is_one_clear_error(mnist_dir, tmp_path, capsys):
    """The one-cycle schedule is sized for the run that wrote the checkpoint; more epochs step past it."""
    run_cli(["fit", "--data.data_dir", mnist_dir, *TINY], tmp_path)
    best = tmp_path / "outputs" / "cli_lightning" / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--data.data_dir", mnist_dir, *TINY, "--trainer.max_epochs", "2", "--ckpt_path", best], tmp_path)
    err = capsys.readouterr().err
    assert_clean_error(SimpleNamespace(returncode=exit_info.value.code, stderr=err, out=err),
                       "one-cycle schedule has ended", "trainer.max_epochs")


def printed_config(argv, folder: Path) -> str:
    """What --print_config writes: it ends the run by itself, with exit code 0."""
    printed = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.chdir(folder), contextlib.redirect_stdout(printed):
        load_script(SCRIPT).main([str(arg) for arg in argv])
    assert exit_info.value.code in (0, None)
    return printed.getvalue()


def test_path_datasets_sets_the_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH_DATASETS", "/datasets")
    assert yaml.safe_load(printed_config(["fit", "--print_config"], tmp_path))["data"]["data_dir"] == "/datasets"
    given = printed_config(["fit", "--data.data_dir", "elsewhere", "--print_config"], tmp_path)
    assert yaml.safe_load(given)["data"]["data_dir"] == "elsewhere"
    assert not any(tmp_path.iterdir())


BAD_INPUT = [
    (["fit", "--model.foo", "1"], ["unrecognized", "--model.foo"]),
    (["fit", "--trainer.max_epochs", "abc"], ["trainer.max_epochs", "expected int", "abc"]),
    (["fit", "--model.lr", "fast"], ["model.lr", "expected float", "fast"]),
    (["fit", "--config", "missing.yaml"], ["missing.yaml", "does not exist"]),
    (["fit", "--config", "broken.yaml"], ["broken.yaml", "not valid YAML", "line 3"]),
    (["fit", "--config", "unknown_key.yaml"], ["trainer.max_epoch"]),
    (["fit", "--trainer.callbacks", "pytorch_lightning.callbacks.NoSuchCallback"],
     ["trainer.callbacks", "cannot import class_path pytorch_lightning.callbacks.NoSuchCallback"]),
    (["fit", "--config", "bad_class.yaml"], ["trainer.logger", "cannot import class_path nowhere.Logger"]),
    (["fit", "--model.batch_size", "32"], ["model.batch_size", "data.batch_size"]),  # a link target
    (["fit", "--data.batch_size", "0"], ["data.batch_size", "at least 1"]),
    (["fit", "--data.val_size", "3000"], ["data.val_size 3000", "no training images"]),
    (["fit", "--trainer.precision", "7-bit"], ["trainer.precision", "bf16-mixed", "7-bit"]),
    (["fit", "--trainer.strategy", "nosuch"], ["cannot build the Trainer", "nosuch"]),
    (["test", "--ckpt_path", "missing.ckpt"], ["missing.ckpt", "no such file"]),
    (["test", "--ckpt_path", "broken.yaml"], ["broken.yaml", "not a readable Lightning checkpoint"]),
    (["test", "--ckpt_path", "best"], ["ckpt_path best", "pass the file"]),
    (["train"], ["invalid choice", "fit"]),
]


@pytest.mark.parametrize("argv, phrases", BAD_INPUT, ids=[" ".join(argv) for argv, _ in BAD_INPUT])
def test_bad_input_gives_one_clear_error_and_writes_nothing(argv, phrases, mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("broken.yaml").write_text("trainer:\n  max_epochs: [1\n")
    Path("unknown_key.yaml").write_text("trainer:\n  max_epoch: 1\n")
    Path("bad_class.yaml").write_text("trainer:\n  logger:\n    class_path: nowhere.Logger\n")
    before = sorted(tmp_path.rglob("*"))
    subcommand, *keys = argv
    result = exit_of(load_script(SCRIPT).main, [subcommand, "--data.data_dir", mnist_dir, "--data.val_size", "500", *keys],
                     capsys)
    assert_clean_error(result, *phrases)
    assert sorted(tmp_path.rglob("*")) == before


def test_no_mnist_offline_is_one_clear_error(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    empty = broken_data(mnist_dir, tmp_path / "nothing", "empty")
    result = exit_of(load_script(SCRIPT).main, ["fit", "--data.data_dir", empty], capsys)
    assert_clean_error(result, "MNIST is not in", "point --data.data_dir or PATH_DATASETS")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["nothing"]


REAL_MNIST = os.environ.get("PATH_DATASETS")


@pytest.mark.skipif(not (REAL_MNIST and Path(REAL_MNIST, "MNIST", "raw").is_dir()),
                    reason="real MNIST not found: set PATH_DATASETS to a folder holding MNIST/raw")
def test_real_mnist_one_epoch(tmp_path):
    printed = run_cli(["fit", "--data.data_dir", REAL_MNIST, "--trainer.max_epochs", "1",
                       "--trainer.enable_progress_bar", "false"], tmp_path)
    assert printed_accuracy(printed) > 0.98
