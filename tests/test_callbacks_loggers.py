"""callbacks_lightning.py and loggers_lightning.py: the catalogues, the demo runs, and bad input.

Each script trains once per module-scoped fixture on the synthetic set; the tests read its output.
"""
import ast
import importlib.util
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import QUICK, assert_clean_error, printed_accuracy, run_in

SHORT = (*QUICK, "--limit_train_batches", "20")  # 20 batches of 64 per epoch: enough to learn the synthetic set
# One xdist group per script: each module-scoped run happens once, and the two scripts' tests run in parallel.
CALLBACKS = pytest.mark.xdist_group("callbacks_lightning")
LOGGERS = pytest.mark.xdist_group("loggers_lightning")


def info_twice(script: str, tmp_path_factory, *extra):
    """Run --info twice into one folder, with a stale file planted in between; return both snapshots."""
    cwd = tmp_path_factory.mktemp(script.split("_")[0])
    first = run_in(cwd, script, "--info", *extra, check=True)
    folder = next((cwd / "outputs").glob("*/*_info"))
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    (folder / "Stale.txt").write_text("left over from an older Lightning\n")
    run_in(cwd, script, "--info", check=True)
    after = {path.name: path.read_bytes() for path in folder.iterdir()}
    return first, before, after


def expected_files(subpackage: str) -> set:
    """AVAILABLE.txt and <Name>.txt for each name in pytorch_lightning.<subpackage>.__all__, read from the
    source: importing Lightning here would cost seconds."""
    init = Path(importlib.util.find_spec("pytorch_lightning").submodule_search_locations[0], subpackage, "__init__.py")
    assignment = next(node for node in ast.parse(init.read_text()).body if isinstance(node, ast.Assign)
                      and any(getattr(target, "id", None) == "__all__" for target in node.targets))
    return {f"{name}.txt" for name in ast.literal_eval(assignment.value)} | {"AVAILABLE.txt"}


# %% callbacks_lightning.py
@pytest.fixture(scope="module")
def callbacks_info(tmp_path_factory):
    return info_twice("callbacks_lightning.py", tmp_path_factory, "--list")


@pytest.fixture(scope="module")
def callbacks_demo(mnist_dir, tmp_path_factory):
    """Every default callback; --stop_at_acc 0.8 stops it after epoch 1 of 0..2 on the synthetic set."""
    cwd = tmp_path_factory.mktemp("callbacks_demo")
    result = run_in(cwd, "callbacks_lightning.py", "--data_dir", mnist_dir, *SHORT, "--epochs", "3",
                    "--stop_at_acc", "0.8", "--ema_decay", "0.9", check=True)
    return result, cwd / "outputs" / "callbacks_lightning"


def did(output: str, callback: str) -> str:
    """The line of the 'What each callback did' report for one callback."""
    match = re.search(rf"^  {callback}\s+(.+)$", output, re.MULTILINE)
    assert match, f"no report line for {callback}:\n{output[-3000:]}"
    return match.group(1)


@CALLBACKS
def test_callbacks_info_has_one_file_per_callback_and_reruns_identically(callbacks_info):
    first, before, after = callbacks_info
    assert set(before) == expected_files("callbacks")
    assert after == before  # same bytes, nothing appended, the stale file removed
    available = before["AVAILABLE.txt"].decode()
    for name in ("EarlyStopping", "EMAWeightAveraging", "LambdaCallback", "BatchSizeFinder"):
        assert re.search(rf"^{name}\s+\S+\s+\d+\s+\w", available, re.MULTILINE), name
    # --list prints the same table that AVAILABLE.txt holds.
    assert available.split("\n\n", 1)[1].strip() in first.stdout
    page = before["EarlyStopping.txt"].decode()
    assert "monitor: str," in page and "patience: int = 3," in page and "on_validation_end" in page
    callback_page = before["Callback.txt"].decode()
    assert "on_init_start" in callback_page and "on_exception" in callback_page


@CALLBACKS
def test_callbacks_demo_shows_what_each_callback_did(callbacks_demo):
    result, out = callbacks_demo
    output = result.stdout
    assert "stopped the run after epoch 1 (of epochs 0..2)" in did(output, "EarlyStopping")
    history = pd.read_csv(out / "history.csv", index_col="epoch")
    assert list(history.index) == [0, 1]  # the third epoch never ran
    # LearningRateMonitor: one value per epoch in the report and in metrics.csv, cosine-annealed.
    lrs = pd.read_csv(out / "csv_logs" / "version_0" / "metrics.csv")["lr-AdamW"].dropna().tolist()
    assert lrs == pytest.approx([0.003, 0.00225])
    assert "lr-AdamW = 0.00300, 0.00225" in did(output, "LearningRateMonitor")
    assert float(re.search(r"train ([0-9.]+) s", did(output, "Timer")).group(1)) > 0
    # GradientAccumulationScheduler: 20 batches at 1 per step, then 20 at 2 per step.
    assert "{0: 1, 1: 2}; 30 optimizer steps" in did(output, "GradientAccumulationScheduler")
    assert "at 30 optimizer steps" in did(output, "LambdaCallback")
    distance = float(re.search(r"by ([0-9.]+)%", did(output, "EMAWithReport")).group(1))
    assert distance > 0.1  # the averaged weights really differ from the last raw ones
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert "| Name" in result.stderr  # ModelSummary's table
    assert printed_accuracy(output) > 0.5


@CALLBACKS
def test_custom_callback_prints_the_2x_hooks_in_order(callbacks_demo):
    output = callbacks_demo[0].stdout
    hooks = re.findall(r"\[hook +\d+\] (\w+)", output)
    fit = ["setup", "on_fit_start", "on_sanity_check_end", "on_train_start", "on_train_epoch_start",
           "on_validation_end", "on_train_epoch_end", "on_save_checkpoint", "on_train_epoch_start",
           "on_validation_end", "on_train_epoch_end", "on_save_checkpoint", "on_train_end", "on_fit_end", "teardown"]
    assert hooks == fit + ["setup", "on_test_start", "on_test_end", "teardown"]
    assert "accumulate_grad_batches=2" in output


@CALLBACKS
def test_lr_finder_and_on_exception(mnist_dir, run_script):
    result = run_script("callbacks_lightning.py", "--data_dir", mnist_dir, *SHORT, "--callbacks",
                        "hooks,lr_finder", "--raise_at_step", "3")
    assert result.returncode == 1, result.out[-3000:]
    assert "Traceback" not in result.out
    assert re.search(r"Learning rate set to [0-9.e-]+", result.out), result.out[-3000:]
    hooks = re.findall(r"\[hook +\d+\] (\w+)", result.stdout)
    assert hooks[-2:] == ["on_train_epoch_start", "on_exception"], hooks
    assert "simulated failure at optimizer step 3" in result.stdout


@CALLBACKS
def test_callbacks_bad_input(run_script):
    result = run_script("callbacks_lightning.py", "--callbacks", "early_stopping,nope")
    assert_clean_error(result, "unknown callback", "nope", "valid names", "lr_finder")


# %% loggers_lightning.py
@pytest.fixture(scope="module")
def loggers_info(tmp_path_factory):
    return info_twice("loggers_lightning.py", tmp_path_factory)


@pytest.fixture(scope="module")
def loggers_demo(mnist_dir, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("loggers_demo")
    result = run_in(cwd, "loggers_lightning.py", "--data_dir", mnist_dir, *SHORT, "--epochs", "2",
                    "--log_every_n_steps", "5", check=True)
    return result, cwd / "outputs" / "loggers_lightning"


@LOGGERS
def test_loggers_info_lists_every_logger_and_its_backend(loggers_info):
    _, before, after = loggers_info
    assert set(before) == expected_files("loggers")
    assert after == before
    available = before["AVAILABLE.txt"].decode()
    assert re.search(r"^CSVLogger\s+csv\s+built in", available, re.MULTILINE)
    assert re.search(r"^TensorBoardLogger\s+tensorboard\s+installed \(tensorboard ", available, re.MULTILINE)
    wandb = "installed" if importlib.util.find_spec("wandb") else "not installed \\(wandb\\): pip install wandb"
    assert re.search(rf"^WandbLogger\s+wandb\s+{wandb}", available, re.MULTILINE)
    assert "experiment_name: str = 'lightning_logs'," in before["MLFlowLogger.txt"].decode()


@LOGGERS
def test_loggers_demo_reports_missing_backends_and_continues(loggers_demo):
    output = loggers_demo[0].stdout
    for module, logger, install in (("wandb", "WandbLogger", "pip install wandb"),
                                    ("comet_ml", "CometLogger", "pip install comet-ml")):
        notice = f"{logger}: not installed here ({module} is missing); enable it with: {install}"
        if importlib.util.find_spec(module) is None:
            assert notice in output
        else:  # installed: the branch still checks something, that there is no false notice
            assert notice not in output
    assert "Open TensorBoard on this run:  tensorboard --logdir" in output
    assert printed_accuracy(output) > 0.5


@LOGGERS
def test_per_epoch_table_from_interleaved_csv(loggers_demo):
    out = loggers_demo[1]
    metrics = pd.read_csv(out / "csv_logs" / "version_0" / "metrics.csv")
    # The raw file interleaves step rows and epoch rows, each with NaN in the other's columns.
    assert metrics["train_loss_step"].notna().sum() >= 4 and metrics["valid_acc"].notna().sum() == 2
    assert metrics[["train_loss_step", "valid_acc"]].isna().any().all()
    history = pd.read_csv(out / "history.csv", index_col="epoch")
    assert list(history.index) == [0, 1]
    logged = ["train_loss", "valid_loss", "train_acc", "valid_acc"]
    assert set(logged) <= set(history.columns) and not history[logged].isna().any().any()
    assert history.loc[1, "valid_acc"] == pytest.approx(metrics["valid_acc"].dropna().iloc[-1])
    for plot in ("loss.png", "acc.png"):
        assert (out / plot).stat().st_size > 1000
    assert "lr: 0.01" in next((out / "csv_logs").glob("version_0/hparams.yaml")).read_text()


@LOGGERS
def test_tensorboard_events_hold_the_scalars_and_the_image(loggers_demo):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = loggers_demo[1]
    events = EventAccumulator(str(out / "tb_logs" / "version_0"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train_loss_step", "train_loss_epoch", "train_acc_epoch", "valid_loss", "valid_acc", "test_acc"):
        assert tag in tags["scalars"], tags
    assert "test_digits" in tags["images"]
    metrics = pd.read_csv(out / "csv_logs" / "version_0" / "metrics.csv")
    tensorboard_acc = [event.value for event in events.Scalars("valid_acc")]
    assert tensorboard_acc == pytest.approx(metrics["valid_acc"].dropna().tolist(), abs=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
@LOGGERS
def test_mlflow_file_store_holds_params_metrics_and_image(loggers_demo):
    output, out = loggers_demo[0].stdout, loggers_demo[1]
    assert re.search(r"^  MLFlowLogger\s+image: artifact test_digits.png", output, re.MULTILINE), output[-3000:]
    runs = [path for path in (out / "mlruns").glob("*/*") if (path / "params").is_dir()]
    assert len(runs) == 1
    assert (runs[0] / "params" / "lr").read_text().strip() == "0.01"
    assert (runs[0] / "metrics" / "valid_acc").read_text().count("\n") == 2  # one line per epoch
    assert (runs[0] / "artifacts" / "test_digits.png").stat().st_size > 1000


@LOGGERS
def test_loggers_bad_input(run_script):
    result = run_script("loggers_lightning.py", "--loggers", "csv,neptune")
    assert_clean_error(result, "unknown logger", "neptune", "valid names", "mlflow")
