"""callbacks_lightning.py and loggers_lightning.py: the catalogues, the demo runs, and bad input.

Each script trains once per module-scoped fixture on the synthetic set; the tests read its output.
"""
import ast
import errno
import importlib.util
import os
import re
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import QUICK, assert_clean_error, exit_of, interrupt, load_script, printed_accuracy, run_in

SHORT = (*QUICK, "--limit_train_batches", "20")  # 20 batches of 64 per epoch: enough to learn the synthetic set
# One xdist group per script: each module-scoped run happens once, and the two scripts' tests run in parallel.
CALLBACKS = pytest.mark.xdist_group("callbacks_lightning")
LOGGERS = pytest.mark.xdist_group("loggers_lightning")


def catalogue_twice(script: str, tmp_path_factory, *first_flags):
    """Write the catalogue with first_flags, plant a stale file, then run the script with no flags at
    all (what the original tutorial told users to do) into the same folder; return both snapshots."""
    cwd = tmp_path_factory.mktemp(script.split("_")[0])
    first = run_in(cwd, script, *first_flags, check=True)
    folder = next((cwd / "outputs").glob("*/*_info"))
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    (folder / "Stale.txt").write_text("left over from an older Lightning\n")
    plain = run_in(cwd, script, check=True)  # offline: script_env blocks every download
    after = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert sorted(path.name for path in cwd.iterdir()) == ["outputs"]  # no data folder: nothing was downloaded
    assert f"python {script} --demo" in plain.stdout  # says how to get the training demo
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
    return catalogue_twice("callbacks_lightning.py", tmp_path_factory, "--list", "--info")


@pytest.fixture(scope="module")
def callbacks_demo(mnist_dir, tmp_path_factory):
    """Every default callback; --stop_at_acc 0.8 stops it after epoch 1 of 0..2 on the synthetic set."""
    cwd = tmp_path_factory.mktemp("callbacks_demo")
    result = run_in(cwd, "callbacks_lightning.py", "--demo", "--data_dir", mnist_dir, *SHORT, "--epochs", "3",
                    "--stop_at_acc", "0.8", "--ema_decay", "0.9", "--save_model", check=True)
    return result, cwd / "outputs" / "callbacks_lightning"


def did(output: str, callback: str) -> str:
    """The line of the 'What each callback did' report for one callback."""
    match = re.search(rf"^  {callback}\s+(.+)$", output, re.MULTILINE)
    assert match, f"no report line for {callback}:\n{output[-3000:]}"
    return match.group(1)


@CALLBACKS
def test_callbacks_catalogue_has_one_file_per_callback_and_reruns_identically(callbacks_info):
    first, before, after = callbacks_info
    assert set(before) == expected_files("callbacks")
    assert after == before  # the run without flags: same bytes, nothing appended, the stale file removed
    available = before["AVAILABLE.txt"].decode()
    for name in ("EarlyStopping", "EMAWeightAveraging", "LambdaCallback", "BatchSizeFinder"):
        assert re.search(rf"^{name}\s+\S+\s+\d+\s+\w", available, re.MULTILINE), name
    # --list prints the same table that AVAILABLE.txt holds.
    assert available.split("\n\n", 1)[1].strip() in first.stdout
    page = before["EarlyStopping.txt"].decode()
    assert "monitor: str," in page and "patience: int = 3," in page and "on_validation_end" in page
    assert "In this demo: --callbacks early_stopping: stop when valid_acc stalls" in page
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
    assert history["lr-AdamW"].tolist() == pytest.approx(lrs)
    assert "lr-AdamW = 0.00300, 0.00225" in did(output, "LearningRateMonitor")
    assert float(re.search(r"train ([0-9.]+) s", did(output, "Timer")).group(1)) > 0
    # GradientAccumulationScheduler: 20 batches at 1 per step, then 20 at 2 per step.
    assert "{0: 1, 1: 2}; 30 optimizer steps" in did(output, "GradientAccumulationScheduler")
    assert "at 30 optimizer steps" in did(output, "LambdaCallback")
    distance = float(re.search(r"by ([0-9.]+)%", did(output, "EMAWithReport")).group(1))
    assert distance > 0.1  # the averaged weights really differ from the last raw weights
    assert "best valid_acc" in did(output, "ModelCheckpoint")
    assert torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] in (0, 1)
    assert not list(out.rglob(".*.partial"))  # AtomicCheckpointIO renamed every write into place
    assert "| Name" in result.stderr  # ModelSummary's table
    assert printed_accuracy(output) > 0.5
    # --save_model: the tested weights (the EMA average), loadable into the plain network.
    network = load_script("callbacks_lightning.py").MNISTConvNet()
    network.load_state_dict(torch.load(out / "mnist_classifier.pt", weights_only=True))


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
def test_lr_finder_and_on_exception(mnist_dir, run_script, tmp_path):
    result = run_script("callbacks_lightning.py", "--demo", "--data_dir", mnist_dir, *SHORT, "--callbacks",
                        "hooks,lr_finder", "--raise_at_step", "3")
    assert result.returncode == 1, result.out[-3000:]
    assert "Traceback" not in result.out
    assert re.search(r"Learning rate set to [0-9.e-]+", result.out), result.out[-3000:]
    hooks = re.findall(r"\[hook +\d+\] (\w+)", result.stdout)
    assert hooks[-2:] == ["on_train_epoch_start", "on_exception"], hooks
    assert "simulated failure at optimizer step 3" in result.stdout
    # The finder's temporary checkpoint (written by AtomicCheckpointIO) was removed, with no partial file.
    assert not list(tmp_path.rglob("*.ckpt*")) and not list(tmp_path.rglob("*.partial"))


@CALLBACKS
def test_callbacks_bad_input(run_script):
    """The whole path once as a user meets it: a fresh process, stderr, the exit code."""
    result = run_script("callbacks_lightning.py", "--callbacks", "early_stopping,nope")
    assert_clean_error(result, "unknown callback", "nope", "valid names", "lr_finder")


# %% loggers_lightning.py
@pytest.fixture(scope="module")
def loggers_info(tmp_path_factory):
    return catalogue_twice("loggers_lightning.py", tmp_path_factory, "--info")


@pytest.fixture(scope="module")
def loggers_demo(mnist_dir, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("loggers_demo")
    result = run_in(cwd, "loggers_lightning.py", "--demo", "--data_dir", mnist_dir, *SHORT, "--epochs", "2",
                    "--log-interval", "5", check=True)  # the original tutorial's spelling of --log_every_n_steps
    return result, cwd / "outputs" / "loggers_lightning"


@LOGGERS
def test_loggers_catalogue_lists_every_logger_and_its_backend(loggers_info):
    first, before, after = loggers_info
    assert set(before) == expected_files("loggers")
    assert after == before
    available = before["AVAILABLE.txt"].decode()
    assert available.split("\n\n", 1)[1].strip() in first.stdout  # printed as well as written
    assert re.search(r"^CSVLogger\s+csv\s+built in", available, re.MULTILINE)
    assert re.search(r"^TensorBoardLogger\s+tensorboard\s+installed \(tensorboard ", available, re.MULTILINE)
    wandb = "installed" if importlib.util.find_spec("wandb") else "not installed \\(wandb\\): pip install wandb"
    assert re.search(rf"^WandbLogger\s+wandb\s+{wandb}", available, re.MULTILINE)
    assert "experiment_name: str = 'lightning_logs'," in before["MLFlowLogger.txt"].decode()


@LOGGERS
def test_loggers_demo_reports_missing_backends_and_continues(loggers_demo):
    result = loggers_demo[0]
    output = result.stdout
    for module, logger, install in (("wandb", "WandbLogger", "pip install wandb"),
                                    ("comet_ml", "CometLogger", "pip install comet-ml")):
        notice = f"{logger}: not installed here ({module} is missing); enable it with: {install}"
        if importlib.util.find_spec(module) is None:
            assert notice in output
        else:  # installed: the branch still checks something, that there is no false notice
            assert notice not in output
    assert "Open TensorBoard on this run:  tensorboard --logdir" in output
    assert "note: --log-interval (from the original tutorial): it is --log_every_n_steps now" in result.stderr
    assert printed_accuracy(output) > 0.5


@LOGGERS
def test_per_epoch_table_from_interleaved_csv(loggers_demo):
    out = loggers_demo[1]
    metrics = pd.read_csv(out / "csv_logs" / "version_0" / "metrics.csv")
    # The raw file interleaves step rows and epoch rows, each with NaN in the other's columns.
    assert metrics["valid_acc"].notna().sum() == 2
    assert metrics[["train_loss_step", "valid_acc"]].isna().any().all()
    assert metrics["train_loss_step"].notna().sum() == 8  # 40 steps, every 5th: --log-interval 5 was applied
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
def test_mlflow_store_holds_params_metrics_and_image(loggers_demo):
    """Read back with MLflow's own client, given nothing but the database's URI."""
    from mlflow import MlflowClient
    output, out = loggers_demo[0].stdout, loggers_demo[1]
    assert re.search(r"^  MLFlowLogger\s+image: artifact test_digits.png", output, re.MULTILINE), output[-3000:]
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("loggers_lightning").experiment_id])
    assert run.data.params["lr"] == "0.01"
    assert len(client.get_metric_history(run.info.run_id, "valid_acc")) == 2  # one value per epoch
    [image] = client.list_artifacts(run.info.run_id)
    assert image.path == "test_digits.png" and image.file_size > 1000


@LOGGERS
def test_loggers_bad_input(run_script):
    result = run_script("loggers_lightning.py", "--loggers", "csv,neptune")
    assert_clean_error(result, "unknown logger", "neptune", "valid names", "mlflow")


# %% Both scripts: the original tutorial's flags, bad input, full disks and interruptions
SCRIPTS = ["callbacks_lightning.py", "loggers_lightning.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_original_tutorial_flags_are_read_and_say_what_they_do(script, capsys):
    """Each old flag maps to its successor or answers with a note; none is silently ignored."""
    module = load_script(script)
    args = module.parse_args(["--demo", "--no-cuda", "--test-batch-size", "1000", "--gamma", "0.7",
                              "--log-interval", "7", "--test", "--save_model"])
    notes = capsys.readouterr().err
    assert args.accelerator == "cpu" and args.eval_batch_size == 1000 and args.batch_size == 128 and args.save_model
    log_interval = "once per epoch" if script == "callbacks_lightning.py" else "it is --log_every_n_steps now"
    schedule = "cosine" if script == "callbacks_lightning.py" else "one-cycle"
    for flag, phrase in (("--no-cuda", "--accelerator cpu"), ("--gamma", schedule),
                         ("--log-interval", log_interval), ("--test", "always ends with a test")):
        assert re.search(rf"^note: {flag} \(from the original tutorial\): .*{phrase}", notes, re.M), notes
    if script == "loggers_lightning.py":
        assert args.log_every_n_steps == 7
    assert not {"gamma", "test", "log_interval", "no_cuda"} & set(vars(args))
    assert module.parse_args(["--demo"]).eval_batch_size == 128  # default: the training batch size
    assert capsys.readouterr().err == ""  # no note without an old flag


@pytest.mark.parametrize("script", SCRIPTS)
def test_structure_flags_print_and_exit_without_data(script, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_script(script).main(["--named_modules", "--named-parameters"]) == 0
    output = capsys.readouterr().out
    assert "model.features.0" in output and "Conv2d" in output
    assert "model.classifier.4.weight" in output and "(10, 128)" in output
    assert not list(tmp_path.iterdir())  # no catalogue, no data, no logs


def earlier_run(out: Path) -> dict:
    """An earlier run's files in out (a checkpoint, a table, the catalogue, logs); returns their bytes."""
    for name, content in (("checkpoints/best.ckpt", b"the good checkpoint"), ("history.csv", b"epoch\n0\n"),
                          ("callbacks_info/AVAILABLE.txt", b"old catalogue"), ("loggers_info/AVAILABLE.txt", b"old"),
                          ("csv_logs/version_0/metrics.csv", b"epoch,step\n"), ("mnist_classifier.pt", b"weights")):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    return files_under(out)


def files_under(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


COMMON_BAD_INPUT = [
    (["--epochs", "0"], ["--epochs", "at least 1"]),
    (["--epochs", "two"], ["--epochs", "invalid"]),
    (["--batch_size", "0"], ["--batch_size", "at least 1"]),
    (["--test-batch-size", "0"], ["--test-batch-size", "at least 1"]),  # the old spelling, the same error
    (["--lr", "nan"], ["--lr", "above 0"]),
    (["--seed", "-1"], ["--seed", "between 0 and"]),
    (["--num_workers", "-1"], ["--num_workers", "at least 0"]),
    (["--val_size", "0"], ["--val_size", "at least 1"]),
    (["--val_size", "3000"], ["--val_size", "no training images"]),  # the synthetic set has 3000
    (["--limit_val_batches", "0"], ["--limit_val_batches", "at least 1"]),  # EarlyStopping / the table had no metric
    (["--limit_train_batches", "0"], ["--limit_train_batches", "at least 1"]),
    (["--limit_test_batches", "0"], ["--limit_test_batches", "at least 1"]),
    (["--limit_val_batches", "1.5"], ["--limit_val_batches", "above 0 and at most 1"]),
    (["--fast_dev_run", "-1"], ["--fast_dev_run", "at least 0"]),
    (["--devices", "0"], ["cannot build the Trainer", "devices"]),
    (["--devices", "abc"], ["cannot build the Trainer", "devices"]),
    (["--num_nodes", "0"], ["--num_nodes", "at least 1"]),
    (["--num_nodes", "2"], ["MASTER_ADDR", "NODE_RANK"]),
    (["--accelerator", "tpu"], ["cannot build the Trainer from these flags"]),
    (["--precision", "bogus"], ["cannot build the Trainer from these flags"]),
    (["--strategy", "bogus"], ["cannot build the Trainer from these flags"]),
    (["--load_model", "missing.pt"], ["missing.pt", "no such file"]),
    (["--load_model", "earlier/mnist_classifier.pt"], ["tests no saved weights", "Basic_usage_of_lightning.py"]),
    (["--output_dir", "taken/run"], ["taken", "is a file"]),
    (["--data_dir", "nowhere"], ["MNIST is not in", "PATH_DATASETS"]),
    (["--no_such_flag"], ["unrecognized arguments"]),
    # Each valid alone, but not with the data or each other: refused before Lightning or torch fail.
    (["--lr", "1e308"], ["--lr 1e+308", "too large"]),
    (["--limit_train_batches", "0.000001"], ["--limit_train_batches 1e-06", "less than one batch"]),
    (["--limit_test_batches", "1e-9"], ["--limit_test_batches 1e-09", "less than one batch"]),
    (["--batch_size", "100000000"], ["a batch of 100000000"]),
]
CALLBACKS_BAD_INPUT = [
    (["--callbacks", "hooks,nope"], ["unknown callback", "nope", "valid names"]),
    (["--callbacks", ","], ["unknown callback", "valid names"]),
    (["--patience", "-1"], ["--patience", "at least 0"]),
    (["--stop_at_acc", "1.5"], ["--stop_at_acc", "above 0 and at most 1"]),
    (["--stop_at_acc", "0.9", "--callbacks", "hooks"], ["--stop_at_acc", "early_stopping"]),
    (["--ema_decay", "1"], ["--ema_decay", "above 0 and below 1"]),
    (["--time_limit", "0"], ["--time_limit", "at least 1"]),
    (["--raise_at_step", "0"], ["--raise_at_step", "at least 1"]),
]
LOGGERS_BAD_INPUT = [
    (["--loggers", "csv,neptune"], ["unknown logger", "neptune", "valid names"]),
    (["--log_every_n_steps", "0"], ["--log_every_n_steps", "at least 1"]),
    (["--log-interval", "0"], ["--log-interval", "at least 1"]),  # the old spelling, the same error
]


@pytest.mark.parametrize("script, flags, phrases", [
    *[("callbacks_lightning.py", *case) for case in COMMON_BAD_INPUT + CALLBACKS_BAD_INPUT],
    *[("loggers_lightning.py", *case) for case in COMMON_BAD_INPUT + LOGGERS_BAD_INPUT],
])
def test_bad_input_is_one_line_and_leaves_the_earlier_run_alone(script, flags, phrases, mnist_dir, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "SLURM_NTASKS", "PATH_DATASETS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # offline: a download fails at once
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    (tmp_path / "earlier").mkdir()
    before = earlier_run(tmp_path / "earlier")
    (tmp_path / "taken").write_text("a file, not a folder")
    argv = ["--demo", "--data_dir", mnist_dir, "--val_size", "500", "--output_dir", "earlier", *flags]
    assert_clean_error(exit_of(load_script(script).main, argv, capsys), *phrases)
    after = files_under(tmp_path / "earlier")
    # MLFlowLogger opens its database (an empty mlflow.db) when it is built, which has to be before the
    # Trainer can check the hardware flags; no run is recorded in it.
    if script == "loggers_lightning.py":
        after.pop(Path("mlflow.db"), None)
    assert after == before  # nothing written, overwritten or deleted
    assert (tmp_path / "taken").read_text() == "a file, not a folder"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["earlier", "taken"]  # no data/ or outputs/ either


@pytest.mark.parametrize("script, flags", [("callbacks_lightning.py", ["--epochs", "2", "--no-cuda"]),
                                           ("loggers_lightning.py", ["--data_dir", "/datasets"])])
def test_training_flags_without_demo_are_refused_not_ignored(script, flags, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    result = exit_of(load_script(script).main, flags, capsys)
    assert_clean_error(result, f"{flags[0]}", "for the training demo only", "add --demo")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_full_disk_mid_catalogue_leaves_every_file_whole(script, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "out" / f"{script.split('_')[0]}_info"
    folder.mkdir(parents=True)
    (folder / "AVAILABLE.txt").write_text("the earlier catalogue\n")
    (folder / "Old.txt").write_text("a page of the earlier catalogue\n")
    written = []
    original = Path.write_text

    def fills_up(path, text, *args, **kwargs):
        if len(written) == 3:
            original(path, text[:10])  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(path)
        return original(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fills_up)
    result = exit_of(load_script(script).main, ["--output_dir", tmp_path / "out"], capsys)
    assert_clean_error(result, "cannot write", str(folder), "No space left on device")
    files = {path.name: path.read_text() for path in folder.iterdir()}
    renamed_into_place = {path.name.removeprefix(".").removesuffix(".partial") for path in written}
    assert set(files) == {"Old.txt"} | renamed_into_place, files  # no partial file left
    assert files["AVAILABLE.txt"].startswith(("Callbacks in", "Loggers in"))  # the first file written
    assert files["Old.txt"] == "a page of the earlier catalogue\n"  # kept: the new catalogue never finished
    assert all(text.endswith("\n") for text in files.values())  # whole files only


def test_a_full_disk_during_a_checkpoint_keeps_the_good_one(mnist_dir, tmp_path, monkeypatch, capsys):
    """AtomicCheckpointIO: the failed write leaves best.ckpt as it was and no partial file; one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    best = tmp_path / "out" / "checkpoints" / "best.ckpt"
    best.parent.mkdir(parents=True)
    torch.save({"epoch": 7, "state_dict": {}}, best)
    good = best.read_bytes()

    def fills_up(obj, file, *args, **kwargs):
        file.write(b"the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", fills_up)
    argv = ["--demo", "--data_dir", mnist_dir, "--output_dir", "out", *QUICK, "--callbacks", "checkpoint",
            "--limit_train_batches", "2", "--limit_val_batches", "2", "--accelerator", "cpu"]
    result = exit_of(load_script("callbacks_lightning.py").main, argv, capsys)
    assert_clean_error(result, "cannot write", "best.ckpt", "No space left on device", "untouched")
    assert best.read_bytes() == good
    assert not list(best.parent.glob(".*partial"))
    assert "interrupted" not in result.out  # not mistaken for Ctrl-C


@pytest.mark.parametrize("script, signal_number, code, said, trigger", [
    # SIGTERM (a scheduler's stop) in epoch 1, after epoch 0's checkpoint was written.
    ("callbacks_lightning.py", signal.SIGTERM, 143, "interrupted by SIGTERM", r"on_train_epoch_start\s+epoch 1"),
    # Ctrl-C while the progress bar shows the first training epoch.
    ("loggers_lightning.py", signal.SIGINT, 130, "interrupted by Ctrl-C", r"Epoch 0: +\d+%.*[1-9]/"),
])
@pytest.mark.slow
def test_an_interrupted_demo_says_so_and_does_not_succeed(script, signal_number, code, said, trigger, mnist_dir,
                                                          tmp_path):
    flags = ["--callbacks", "hooks,checkpoint"] if script == "callbacks_lightning.py" else ["--loggers", "csv"]
    result = interrupt(tmp_path, script, "--demo", "--data_dir", mnist_dir, *QUICK, "--epochs", "50",
                       "--limit_train_batches", "20", *flags, when=trigger, signal_number=signal_number)
    output = result.out
    assert result.returncode == code, output[-3000:]
    assert output.count(said) == 1 and "nothing was tested" in output
    assert "Traceback" not in output and "test accuracy" not in output
    out = tmp_path / "outputs" / script.removesuffix(".py")
    assert not list(out.rglob(".*partial"))
    for checkpoint in out.rglob("*.ckpt"):  # every checkpoint left behind loads
        assert torch.load(checkpoint, weights_only=True)["epoch"] < 49
    if script == "callbacks_lightning.py":
        assert (out / "checkpoints" / "best.ckpt").is_file()
