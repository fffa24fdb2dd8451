"""Basic_usage_of_lightning.py --compile: it learns, its files load uncompiled, and what cannot work says so.

Compiling takes tens of seconds on a small CPU, so one compiled run (a module-scoped fixture) serves
every test that needs one, and those tests are marked slow; the error paths stop before any compile.
"""
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
