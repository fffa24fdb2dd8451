"""What a learner reads: a run's output without the library lines nobody can act on, catalogues that
describe each class with its own docstring, an outputs listing that tells this run's files from an
earlier run's, and logs that each tool's own API reads back to the numbers the script printed."""
import importlib.util
import logging
import os
import re

import pandas as pd
import pytest

from conftest import QUICK, load_script, printed_accuracy, run_in

# The lines of issue 18: Lightning's notes about default limits and its logger tips, the warning about
# a checkpoint folder that a rerun fills again, and torch's notes from inside the quantization stack.
NOISE = ["=1.0)` was configured", "Tip: For seamless", "exists and is not empty", "No CUDA runtime is found",
         "is an Enum subclass", "reduce_range will be deprecated"]


def noise_in(output: str) -> list:
    return [line for line in output.splitlines() if any(noise in line for noise in NOISE)]


def outputs_listing(output: str) -> dict:
    """{name: note} of the 'Outputs in ...' block the script printed last."""
    block = output.rsplit("\nOutputs in ", 1)[1].splitlines()[1:]
    entries = {}
    for line in block:
        match = re.match(r"^  (\S+)( \(.*\))?$", line)
        if not match:
            break
        entries[match.group(1)] = (match.group(2) or "").strip(" ()")
    return entries


@pytest.fixture(scope="module")
def three_runs(mnist_dir, tmp_path_factory):
    """Basic_usage_of_lightning.py three times into one folder, with the default validation and test
    limits: a run that saves the model, a rerun without --save_model, and a --fast_dev_run that
    writes nothing."""
    cwd = tmp_path_factory.mktemp("three_runs")
    flags = ("--data_dir", mnist_dir, "--epochs", "1", "--val_size", "500", "--limit_train_batches", "5")
    first = run_in(cwd, "Basic_usage_of_lightning.py", *flags, "--save_model", check=True)
    second = run_in(cwd, "Basic_usage_of_lightning.py", *flags, check=True)
    fast = run_in(cwd, "Basic_usage_of_lightning.py", *flags, "--fast_dev_run", check=True)
    return first, second, fast


def test_a_run_prints_no_line_a_learner_cannot_act_on(three_runs):
    first, second, _ = three_runs
    assert "Trainer.fit` stopped" in first.out  # what Lightning says that teaches stays
    assert noise_in(first.out) == [] and noise_in(second.out) == []  # the rerun fills checkpoints/ again


def test_outputs_listing_marks_what_an_earlier_run_wrote(three_runs):
    first, second, fast = three_runs
    assert outputs_listing(first.out)["mnist_classifier.pt"] == ""
    second_listing = outputs_listing(second.out)
    assert second_listing["mnist_classifier.pt"] == "earlier run"  # this run did not save the model
    assert second_listing["checkpoints/"] == "" and second_listing["history.csv"] == ""
    assert second_listing["csv_logs/"] == "partly an earlier run's"  # version_0 and version_1
    fast_listing = outputs_listing(fast.out)
    assert fast_listing and set(fast_listing.values()) == {"earlier run"}, fast_listing  # it writes nothing


def test_lightning_and_torch_notes_are_filtered_at_their_loggers():
    """The filters the scripts install in their imports cell drop exactly those records."""
    for script in ("quant_lightning_ptq.py", "quant_lightning_qat.py", "quant_with_only_lightning.py"):
        load_script(script)
    cases = [("pytorch_lightning.utilities.rank_zero", "`Trainer(limit_val_batches=1.0)` was configured so ...", False),
             ("pytorch_lightning.utilities.rank_zero", "`Trainer(limit_val_batches=1)` was configured so 1 batch", True),
             ("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME='/usr/local'", False),
             ("torch.utils._pytree", "<enum 'KernelPreference'> is an Enum subclass and is now natively", False),
             ("torch.utils._pytree", "another note", True)]
    for name, message, kept in cases:
        record = logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)
        assert bool(logging.getLogger(name).filter(record)) == kept, message


@pytest.mark.slow
def test_pt2e_quantization_prints_no_torch_internals(mnist_dir, tmp_path):
    result = run_in(tmp_path, "quant_lightning_ptq.py", "--flow", "pt2e", "--data_dir", mnist_dir, *QUICK,
                    "--limit_train_batches", "5", "--limit_val_batches", "2", "--limit_test_batches", "2",
                    "--calibration_batches", "2", "--latency_repeats", "0", check=True)
    assert noise_in(result.out) == []


# %% Catalogues
def test_catalogues_describe_classes_with_their_own_docstrings(tmp_path):
    from pytorch_lightning.callbacks import SpikeDetection
    result = run_in(tmp_path, "callbacks_lightning.py", "--list", check=True)
    assert "The base class of the class hierarchy" not in result.out  # object's docstring
    [row] = [line for line in result.out.splitlines() if line.startswith("SpikeDetection ")]
    assert row.endswith("(inherited from lightning_fabric.utilities.spike.SpikeDetection) Spike Detection Callback.")
    first_paragraph = load_script("callbacks_lightning.py").first_paragraph
    assert first_paragraph(type("Undocumented", (), {})) == "(no docstring)"
    assert first_paragraph(SpikeDetection.__mro__[1]).startswith("Spike Detection Callback.")  # its own


# %% Reading the logs back
@pytest.fixture(scope="module")
def logged(mnist_dir, tmp_path_factory):
    """A two-epoch demo whose --log_every_n_steps is larger than the run: no step values at all."""
    cwd = tmp_path_factory.mktemp("logged")
    result = run_in(cwd, "loggers_lightning.py", "--demo", "--data_dir", mnist_dir, *QUICK, "--epochs", "2",
                    "--limit_train_batches", "8", "--limit_val_batches", "2", "--limit_test_batches", "2",
                    "--log_every_n_steps", "1000", check=True)
    table = result.stdout.split("Per-epoch table from ")[1].split("\n\n")[0].splitlines()
    columns = table[1].split()
    printed = pd.DataFrame([[float(value) for value in row.split()[1:]] for row in table[3:]], columns=columns)
    return result, cwd / "outputs" / "loggers_lightning", printed


def test_a_log_interval_longer_than_the_run_still_ends_well(logged):
    result, out, printed = logged
    assert list(printed.index) == [0, 1] and (out / "loss.png").stat().st_size > 1000
    assert "train_loss_step" not in pd.read_csv(next(out.glob("csv_logs/version_0/metrics.csv"))).columns


def test_csv_log_reads_back_with_pandas(logged):
    _, out, printed = logged
    metrics = pd.read_csv(out / "csv_logs" / "version_0" / "metrics.csv")
    for column in ("valid_loss", "valid_acc"):
        assert metrics[column].dropna().round(4).tolist() == printed[column].tolist()
    assert round(metrics["test_acc"].dropna().item(), 4) == printed_accuracy(logged[0].stdout)


def test_tensorboard_log_reads_back_with_its_event_accumulator(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _, out, printed = logged
    events = EventAccumulator(str(out / "tb_logs" / "version_0"), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("valid_loss", "valid_acc"):
        assert [round(event.value, 4) for event in events.Scalars(tag)] == printed[tag].tolist()
    assert round(events.Scalars("test_acc")[0].value, 4) == printed_accuracy(logged[0].stdout)


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_mlflow_log_reads_back_with_mlflow_alone(logged, monkeypatch):
    """The tracking URI the script printed is all MLflow's client needs: no MLFLOW_* variable."""
    from mlflow import MlflowClient
    result, _, printed = logged
    for name in [name for name in os.environ if name.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)
    client = MlflowClient(re.search(r"mlflow ui --backend-store-uri (\S+)", result.stdout).group(1))
    [run] = client.search_runs([client.get_experiment_by_name("loggers_lightning").experiment_id])
    assert round(run.data.metrics["test_acc"], 4) == printed_accuracy(result.stdout)
    history = sorted(client.get_metric_history(run.info.run_id, "valid_acc"), key=lambda metric: metric.step)
    assert [round(metric.value, 4) for metric in history] == printed["valid_acc"].tolist()
    assert run.data.params["lr"] == "0.01"
