"""Basic_usage_of_lightning.py --compile: it learns, its files load uncompiled, and what cannot work says so.

Compiling takes tens of seconds on a small CPU, so one compiled run (a module-scoped fixture) serves
every test that needs one, and those tests are marked slow; the error paths stop before any compile.
"""
import csv

import pytest
import torch

from conftest import QUICK, assert_clean_error, exit_of, load_script, printed_accuracy, run_in, script_env

SCRIPT = "Basic_usage_of_lightning.py"


@pytest.fixture(scope="module")
def compiled(mnist_dir, tmp_path_factory):
    """One short compiled training run that saves and exports."""
    workdir = tmp_path_factory.mktemp("compiled")
    result = run_in(workdir, SCRIPT, "--data_dir", mnist_dir, *QUICK, "--compile", "--save_model",
                    "--export", "onnx", check=True)
    return workdir / "outputs" / "Basic_usage_of_lightning", result.out


@pytest.mark.slow
def test_compiled_training_learns_and_saves_plain_names(compiled):
    out, output = compiled
    assert printed_accuracy(output) > 0.6  # chance is 0.1
    checkpoint = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    # Compiled in place: the names an uncompiled model expects, no "_orig_mod." in between.
    assert "model.features.0.weight" in checkpoint["state_dict"]
    assert not [key for key in checkpoint["state_dict"] if "_orig_mod" in key]
    assert "compile_mode" not in checkpoint["hyper_parameters"]
    weights = torch.load(out / "mnist_classifier.pt", weights_only=True)
    assert set(weights) == set(load_script(SCRIPT).MNISTConvNet().state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["--load_model", "check_point_load.py"])
def test_compiled_checkpoint_loads_uncompiled_to_the_same_accuracy(compiled, run_script, mnist_dir, loader):
    out, output = compiled
    best = out / "checkpoints" / "best.ckpt"
    if loader == "--load_model":
        reloaded = run_script(SCRIPT, "--data_dir", mnist_dir, "--load_model", best, "--batch_size", "64", check=True)
    else:
        reloaded = run_script("check_point_load.py", "--data_dir", mnist_dir, "--ckpt", best, check=True)
    assert printed_accuracy(reloaded.out) == printed_accuracy(output)


@pytest.mark.slow
def test_compiled_model_exports(compiled):
    out, output = compiled
    assert (out / "mnist_classifier.onnx").stat().st_size > 0
    if "onnxruntime is not installed" not in output:
        assert "100% same predictions" in output, output[-2000:]


@pytest.mark.slow
def test_compiled_ddp_with_bf16_on_two_cpu_processes(run_script, mnist_dir, tmp_path):
    result = run_script(SCRIPT, "--data_dir", mnist_dir, *QUICK, "--limit_train_batches", "10",
                        "--limit_val_batches", "3", "--compile", "--accelerator", "cpu", "--devices", "2",
                        "--strategy", "ddp", "--precision", "bf16-mixed", check=True)
    assert 0 <= printed_accuracy(result.out) <= 1
    assert (tmp_path / "outputs" / "Basic_usage_of_lightning" / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.parametrize("no_compiler", [
    pytest.param({"CXX": "/nonexistent/g++"}, id="CXX names a missing program"),
    pytest.param({"PATH": "/nonexistent"}, id="no compiler on PATH", marks=pytest.mark.slow)])
def test_missing_compiler_says_so_in_one_line(run_script, mnist_dir, tmp_path, no_compiler):
    result = run_script(SCRIPT, "--data_dir", mnist_dir, *QUICK, "--compile", env=script_env(**no_compiler))
    assert_clean_error(result, "needs a C++ compiler", "without --compile")
    assert not (tmp_path / "outputs").exists()


def test_unknown_compile_mode_is_one_line(capsys):
    result = exit_of(load_script(SCRIPT).parse_args, ["--compile", "fastest"], capsys)
    assert_clean_error(result, "--compile", "fastest", "max-autotune-no-cudagraphs")


def test_cuda_graphs_without_a_gpu_stop_before_training(run_script, mnist_dir, tmp_path):
    result = run_script(SCRIPT, "--data_dir", mnist_dir, *QUICK, "--accelerator", "cpu",
                        "--compile", "reduce-overhead")
    assert_clean_error(result, "reduce-overhead", "CUDA GPU", "--compile default")
    assert not (tmp_path / "outputs").exists()


def test_parity_compares_compiled_rows_with_the_compiled_loop():
    """Compiled dropout draws other random numbers than eager dropout: a compiled row's losses and
    x PyTorch are against the compiled loop, x eager against its uncompiled row."""
    parity = load_script("benchmarks/parity.py")
    eager_losses, compiled_losses = [2.3, 2.0, 1.5, 1.2], [2.3, 1.9, 1.6, 1.3]  # 2 epochs of 2 steps

    def run(losses, seconds, compile_seconds=0.0):
        return {"epoch_seconds": seconds, "losses": losses, "wall_seconds": sum(seconds) + 5,
                "rss_before_training_mb": 800, "peak_rss_mb": 900, "gpu_peak_mb": None,
                "compile_seconds": compile_seconds}

    runs = {"pytorch": [run(eager_losses, [2.0, 1.0])], "lightning": [run(eager_losses, [2.5, 1.2])],
            "pytorch_compiled": [run(compiled_losses, [30.0, 0.8], 28.0)],
            "lightning_compiled": [run(compiled_losses, [25.0, 0.84], 27.5)]}
    rows = {row["configuration"]: row for row in parity.summarize(runs, warmup_epochs=1)}
    plain, lightning = rows[parity.CONFIGS["pytorch_compiled"]], rows[parity.CONFIGS["lightning_compiled"]]
    assert all(row["losses match"].startswith("yes") for row in rows.values())
    assert plain["x PyTorch"] == 1.0 and plain["x eager"] == pytest.approx(0.8) and plain["compile s"] == 28.0
    assert lightning["x PyTorch"] == pytest.approx(1.05) and lightning["x eager"] == pytest.approx(0.7)
    assert "compile s" not in rows[parity.CONFIGS["lightning"]]


@pytest.mark.parametrize("script, argv, phrase", [
    ("parity.py", ["--configs", "pytorch,lightning_compiled"], "must include pytorch_compiled"),
    ("parity.py", ["--compile_mode", "fastest"], "--compile_mode: unknown fastest"),
    ("time_to_99.py", ["--compile_mode", "fastest"], "--compile_mode: unknown fastest"),
])
def test_benchmark_compile_flags_refuse_bad_input(script, argv, phrase, capsys):
    result = exit_of(load_script(f"benchmarks/{script}").parse_args, argv, capsys)
    assert_clean_error(result, phrase)


@pytest.mark.parametrize("script, rows", [("parity.py", ["--configs", "pytorch,pytorch_compiled"]),
                                          ("time_to_99.py", ["--frameworks", "pytorch_compiled"])])
def test_benchmarks_refuse_cuda_graphs_on_the_cpu(script, rows, mnist_dir, tmp_path, capsys):
    argv = ["--data_dir", mnist_dir, "--output_dir", tmp_path, "--accelerator", "cpu", "--val_size", "500",
            *rows, "--compile_mode", "reduce-overhead"]
    result = exit_of(load_script(f"benchmarks/{script}").main, argv, capsys)
    assert_clean_error(result, "reduce-overhead", "CUDA GPU")
    assert not list(tmp_path.rglob("*.log"))  # stopped before any run


@pytest.mark.slow
def test_parity_compiled_rows_train_the_same_losses(mnist_dir, tmp_path):
    run_in(tmp_path, "benchmarks/parity.py", "--data_dir", mnist_dir, "--output_dir", tmp_path, "--accelerator", "cpu",
           "--configs", "pytorch,pytorch_compiled,lightning_compiled", "--epochs", "2", "--repeats", "1",
           "--limit_train_batches", "4", "--limit_val_batches", "2", "--val_size", "500", check=True, timeout=1800)
    with open(tmp_path / "parity.csv", newline="") as file:
        rows = {row["configuration"]: row for row in csv.DictReader(file)}
    names = load_script("benchmarks/parity.py").CONFIGS
    compiled, loop = rows[names["lightning_compiled"]], rows[names["pytorch_compiled"]]
    assert compiled["losses match"].startswith("yes"), compiled  # against the compiled plain loop
    assert float(compiled["compile s"]) > 0 and float(loop["compile s"]) > 0
    assert float(loop["x eager"]) > 0 and compiled["x eager"] == ""  # no eager lightning row was run
    assert "compile s" in (tmp_path / "parity.md").read_text()


@pytest.mark.slow
def test_time_to_99_compiled_runs_reach_the_same_accuracy(mnist_dir, tmp_path):
    run_in(tmp_path, "benchmarks/time_to_99.py", "--data_dir", mnist_dir, "--output_dir", tmp_path,
           "--accelerator", "cpu", "--frameworks", "pytorch_compiled,lightning_compiled", "--epochs", "1",
           "--limit_train_batches", "1.0", "--target", "0.5", "--val_size", "500", check=True,
           timeout=1800)  # two cold compiles, each in its own process, beside another test worker
    with open(tmp_path / "time_to_99.csv", newline="") as file:
        accuracies = [float(row["test accuracy"]) for row in csv.DictReader(file)]
    assert len(accuracies) == 2 and min(accuracies) > 0.5  # chance is 0.10
    assert max(accuracies) - min(accuracies) <= 0.002  # the same compiled network on the same batches
    assert "torch.compile mode default" in (tmp_path / "time_to_99.md").read_text()
