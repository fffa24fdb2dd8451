"""The benchmarks run end to end on the synthetic MNIST with tiny sizes and write sane tables.

No timing is asserted (the machine may be busy); what is asserted is what makes a benchmark's
numbers mean something: PyTorch and Lightning train on the same batches to the same losses and
the same test accuracy, the pipelines deliver the same images, the tables and CSVs appear, and
bad input gets a one-line error.
"""
import csv

import pytest

from conftest import assert_clean_error, exit_of, load_script, run_in

SYNTHETIC_SPLIT = ("--val_size", "500")  # the synthetic set has 3000 training images, not 60000


def read_csv(path) -> list:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def load(script: str):
    """A benchmark as a module (conftest's load_script puts benchmarks/ on sys.path for `from common import`)."""
    return load_script(f"benchmarks/{script}")


@pytest.fixture(scope="module")
def parity(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("parity")
    result = run_in(out, "benchmarks/parity.py", "--data_dir", mnist_dir, "--output_dir", out, "--accelerator", "cpu",
                    "--epochs", "2", "--repeats", "1", "--limit_train_batches", "4",
                    "--limit_val_batches", "2", *SYNTHETIC_SPLIT, check=True)
    return out, result


@pytest.fixture(scope="module")
def time_to_target(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("time_to_99")
    # One whole synthetic epoch reaches about 0.8, so a target of 0.5 exercises the "reached" path.
    result = run_in(out, "benchmarks/time_to_99.py", "--data_dir", mnist_dir, "--output_dir", out,
                    "--accelerator", "cpu", "--epochs", "1", "--limit_train_batches", "1.0", "--target", "0.5",
                    *SYNTHETIC_SPLIT, check=True)
    return out, result


def test_parity_trains_the_same_losses_in_all_three_configurations(parity):
    out, result = parity
    rows = {row["configuration"]: row for row in read_csv(out / "parity.csv")}
    assert len(rows) == 3, rows.keys()
    for row in rows.values():
        assert row["losses match"].startswith("yes"), row
        assert float(row["losses match"].split("max diff ")[1].rstrip(")")) <= 1e-5
        assert int(row["steps"]) == 2 * 4  # epochs x limit_train_batches, the same for every side
        assert float(row["s/epoch"]) > 0 and float(row["x PyTorch"]) > 0
        assert 0 < float(row["RSS before training MB"]) <= float(row["peak RSS MB"])
        assert 0 < float(row["final train loss"]) < 2.5  # finite, and no worse than chance (ln 10)
    assert float(rows["PyTorch loop (pytorch/examples style)"]["x PyTorch"]) == 1.0
    assert len({row["final train loss"] for row in rows.values()}) == 1
    assert "| configuration |" in result.stdout and "torch threads" in result.stdout
    assert "| configuration |" in (out / "parity.md").read_text()


def test_parity_runs_lightning_as_the_script_does_and_bare(parity):
    out, _ = parity
    user = out / "parity_runs" / "lightning"
    assert (user / "checkpoints" / "best.ckpt").is_file()
    assert "valid_acc" in (user / "csv_logs" / "version_0" / "metrics.csv").read_text()
    assert list((user / "tb_logs").rglob("events.out.tfevents.*"))
    bare = out / "parity_runs" / "lightning_bare"
    assert not (bare / "checkpoints").exists() and not (bare / "csv_logs").exists()


def test_parity_flags_a_loss_mismatch():
    """The 'losses match' column can say NO: a configuration that trained differently."""
    parity = load("parity.py")
    losses = [2.3, 2.0, 1.5, 1.2, 1.1, 1.0]  # 3 epochs of 2 steps
    run = {"epoch_seconds": [2.0, 1.0, 1.0], "losses": losses,
           "wall_seconds": 6.0, "rss_before_training_mb": 800, "peak_rss_mb": 900, "gpu_peak_mb": None}
    runs = {"pytorch": [run], "lightning": [dict(run, losses=losses[:-1] + [1.01], epoch_seconds=[3.0, 1.1, 1.1])]}
    pytorch, lightning = parity.summarize(runs, warmup_epochs=1)
    assert pytorch["losses match"].startswith("yes") and lightning["losses match"].startswith("NO")
    assert lightning["x PyTorch"] == pytest.approx(1.1) and lightning["s/epoch"] == pytest.approx(1.1)
    assert lightning["ms/step over PyTorch"] == pytest.approx(50.0)  # 0.1 s over 2 steps per epoch
    assert lightning["s outside epochs"] == pytest.approx(0.8)  # 6.0 s of wall minus 5.2 s of epochs


def test_time_to_99_reaches_the_same_accuracy_with_both_frameworks(time_to_target):
    out, result = time_to_target
    rows = {row["framework"]: row for row in read_csv(out / "time_to_99.csv")}
    assert set(rows) == {"pytorch", "lightning"}
    accuracies = [float(row["test accuracy"]) for row in rows.values()]
    assert min(accuracies) > 0.5  # chance is 0.10
    # Same weights, batches and schedule: the plain loop and the script must agree.
    assert max(accuracies) - min(accuracies) <= 0.002, rows
    assert all(row["reached 50.0%"] == "yes" and float(row["wall s"]) > 0 for row in rows.values())
    report = (out / "time_to_99.md").read_text()
    assert "| time to 50.0% s |" in report and "x PyTorch" in report
    assert (out / "time_to_99_runs" / "lightning_1_epochs" / "checkpoints" / "best.ckpt").is_file()


def test_time_to_target_says_when_a_run_falls_short():
    time_to_99 = load("time_to_99.py")
    rows = [{"framework": "pytorch", "epochs": 1, "wall s": 10.0, "test accuracy": 0.985},
            {"framework": "pytorch", "epochs": 2, "wall s": 20.0, "test accuracy": 0.991},
            {"framework": "lightning", "epochs": 2, "wall s": 25.0, "test accuracy": 0.989}]
    pytorch, lightning = time_to_99.time_to_target(rows, 0.99)
    assert pytorch["time to 99.0% s"] == 20.0 and pytorch["epochs"] == 2
    assert lightning["time to 99.0% s"] == "not reached" and "x PyTorch" not in lightning


def test_run_all_runs_benchmarks_and_reports_the_machine(mnist_dir, tmp_path):
    run_in(tmp_path, "benchmarks/run_all.py", "--data_dir", mnist_dir, "--output_dir", tmp_path, "--accelerator", "cpu",
           "--only", "step_overhead,data_pipeline", "--quick", *SYNTHETIC_SPLIT, check=True)
    pipelines = read_csv(tmp_path / "data_pipeline.csv")
    assert [row["pipeline"] for row in pipelines] == ["per-sample transforms, 0 workers",
                                                      "per-sample transforms, 2 workers",
                                                      "tensors preloaded once, 0 workers"]
    for row in pipelines:
        assert float(row["load only s/epoch"]) > 0 and float(row["train s/epoch"]) > 0
    steps = read_csv(tmp_path / "step_overhead.csv")
    assert [row["configuration"] for row in steps][:3] == ["PyTorch loop", "PyTorch loop + metrics", "Lightning loop"]
    assert len(steps) == 6 and all(float(row["ms/step"]) > 0 for row in steps)
    assert all(row["as % of a CNN step"].endswith("%") for row in steps[2:])
    summary = (tmp_path / "summary.md").read_text()
    assert "largest pixel difference 0.0e+00" in summary  # both pipelines give the very same tensors
    for expected in ("## Benchmarks (quick mode)", "### Step overhead", "### Data pipeline", "torch threads",
                     "Load average after", "pytorch-lightning 2.", "| step_overhead | ok |", "| data_pipeline | ok |"):
        assert expected in summary, expected
    assert [row["benchmark"] for row in read_csv(tmp_path / "run_all.csv")] == ["step_overhead", "data_pipeline"]


def test_test_suite_cost_times_pytest_with_and_without_real_data(mnist_dir, tmp_path):
    tiny_suite = tmp_path / "test_tiny.py"
    tiny_suite.write_text(
        "import os\nimport pytest\n\n\ndef test_always():\n    assert True\n\n\n"
        "@pytest.mark.skipif(not os.environ.get('PATH_DATASETS'), reason='needs real MNIST')\n"
        "def test_real_data():\n    assert os.path.isdir(os.environ['PATH_DATASETS'])\n")
    run_in(tmp_path, "benchmarks/test_suite_cost.py", "--data_dir", mnist_dir, "--output_dir", tmp_path,
           "--pytest_args", f"{tiny_suite} -p no:cacheprovider -p no:xdist", check=True)
    default, real = read_csv(tmp_path / "test_suite_cost.csv")
    assert (default["mode"], default["passed"], default["skipped"]) == ("default", "1", "1")
    assert (real["mode"], real["passed"], real["skipped"]) == ("real", "2", "0")
    assert float(default["wall s"]) > 0 and real["PATH_DATASETS"] == str(mnist_dir.resolve())


def test_run_all_without_data_is_a_clean_error(tmp_path):
    result = run_in(tmp_path, "benchmarks/run_all.py", "--data_dir", tmp_path / "nowhere", "--output_dir", tmp_path)
    assert_clean_error(result, "MNIST is not in", "--data_dir")
    assert not (tmp_path / "summary.md").exists()


@pytest.mark.parametrize(("script", "argv", "phrase"), [
    ("parity.py", ["--epochs", "1"], "--epochs must be at least 2"),
    ("parity.py", ["--configs", "lightning"], "must include pytorch"),
    ("time_to_99.py", ["--epochs", "two"], "--epochs takes whole numbers"),
    ("data_pipeline.py", ["--workers", "-1"], "--workers: give one or more counts, none negative"),
    ("step_overhead.py", ["--steps", "0"], "--steps must be at least 1"),
    ("test_suite_cost.py", ["--modes", "fast"], "--modes: unknown fast"),
    ("run_all.py", ["--only", "speed"], "--only: unknown speed"),
    ("quantization.py", ["--methods", "fast"], "--methods: unknown fast"),
    ("quantization.py", ["--methods", "qat,ptq"], "--methods: must start with ptq"),
    ("quantization.py", ["--threads", "0"], "--threads: must be at least 1"),
    ("quantization.py", ["--latency_repeats", "x"], "--latency_repeats"),
    ("quantization.py", ["--results", "table.txt"], "--results: must name a .csv file"),
])
def test_impossible_flags_get_one_error_line(script, argv, phrase, capsys):
    result = exit_of(load(script).parse_args, argv, capsys)
    assert_clean_error(result, phrase)
    assert phrase in result.stderr  # as written, case included


# benchmarks/quantization.py: two int8 paths (eager and PT2E PTQ) in quick mode on the synthetic set.
@pytest.fixture(scope="module")
def quantization(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantization")
    result = run_in(out, "benchmarks/quantization.py", "--data_dir", mnist_dir, "--output_dir", out / "runs",
                    "--results", out / "quantization.csv", "--quick", "--methods", "ptq,ptq_pt2e",
                    "--threads", "1", "--latency_repeats", "2", *SYNTHETIC_SPLIT, check=True)
    return out, result


@pytest.mark.slow
def test_quantization_gathers_every_path_from_one_float_model(quantization):
    out, result = quantization
    rows = read_csv(out / "quantization.csv")
    assert [(row["path"], row["method"]) for row in rows] == [("ptq", "PTQ eager"), ("ptq_pt2e", "PTQ PT2E")]
    assert len({row["fp32_acc"] for row in rows}) == 1  # the PT2E path quantized the eager path's float model
    for row in rows:  # (a quarter of a quick epoch on 2500 images trains little: accuracy is not checked)
        assert float(row["reload_acc"]) == round(float(row["int8_acc"]), 4)  # the saved file, reloaded: the same
        assert 0 < float(row["size_ratio"]) < 0.35
        for batch in (1, 256):
            for column in ("fp32_ms", "fp32_compiled_ms", "int8_ms", "speedup", "speedup_compiled"):
                assert float(row[f"{column}_b{batch}"]) > 0, (row["path"], column, batch)
    assert (out / "runs" / "ptq_pt2e" / "mnist_int8.pt2").is_file() and (out / "runs" / "ptq_reload.log").is_file()


@pytest.mark.slow
def test_quantization_report_says_what_was_measured_and_where(quantization):
    out, result = quantization
    report = (out / "quantization.md").read_text()
    for expected in ("| path | method | backend | fp32 acc | int8 acc | drop (pts) | reloaded acc |",
                     "| b1 fp32 compiled ms |", "b256 int8 x compiled", "| ptq_pt2e |", "int8 instructions", "torchao"):
        assert expected in report, expected
        assert expected in result.stdout, expected
    assert "Command: `python benchmarks/quantization.py --data_dir" in report
    assert "MISSED" not in report and "Target" not in report
