"""The three int8 paths: PTQ (eager and PT2E), QAT inside a LightningModule, and the QAT callback.

The scripts are trained once per module on the synthetic MNIST (the QAT runs start from the PTQ run's
float checkpoint); the callback's constructor options are checked in-process on tiny fits. The PT2E
runs happen in processes where torch.ao.quantization's eager entry points raise when called
(run_without_eager_api), which proves that route survives their removal.
"""
import statistics
import subprocess
import sys

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq

from conftest import (QUICK, ROOT, assert_clean_error, exit_of, interrupt, load_script, printed_accuracy, program_kb,
                      run_in, script_env)

PTQ, QAT, CALLBACK = "quant_lightning_ptq.py", "quant_lightning_qat.py", "quant_with_only_lightning.py"
# One epoch on the synthetic set, one thread, a few timing repeats: seconds per run.
FAST = (*QUICK, "--latency_repeats", "3", "--threads", "1")
DEPRECATION = "torch.ao.quantization is deprecated"


def results_row(out) -> dict:
    table = pd.read_csv(out / "quant_results.csv")
    assert len(table) == 1
    return table.iloc[0].to_dict()


def both_routes(output: str) -> tuple:
    return (printed_accuracy(output, "int8 accuracy, plain PyTorch loop"),
            printed_accuracy(output, "int8 accuracy, Trainer.test"))


def train(script: str, name: str, mnist_dir, tmp_path_factory, *args) -> tuple:
    """One run of script on the synthetic set into a fresh folder: (that folder, its output)."""
    out = tmp_path_factory.mktemp(name)
    result = run_in(out, script, "--data_dir", mnist_dir, "--output_dir", out, *FAST, *args, check=True)
    return out, result.out


@pytest.fixture(scope="module")
def ptq(mnist_dir, tmp_path_factory):
    return train(PTQ, "ptq", mnist_dir, tmp_path_factory, "--calibration_batches", "4")


@pytest.fixture(scope="module")
def qat(mnist_dir, ptq, tmp_path_factory):
    """QAT for one epoch from the PTQ run's float checkpoint."""
    return train(QAT, "qat", mnist_dir, tmp_path_factory, "--ckpt", ptq[0] / "checkpoints" / "best.ckpt",
                 "--qat_epochs", "1")


@pytest.fixture(scope="module")
def callback_run(mnist_dir, ptq, tmp_path_factory):
    return train(CALLBACK, "callback", mnist_dir, tmp_path_factory, "--ckpt", ptq[0] / "checkpoints" / "best.ckpt",
                 "--qat_epochs", "1")


class RunsByScript(dict):
    """{script: (its output folder, its output)}; a script's module fixture runs only when a test asks for it."""

    def __init__(self, request):
        super().__init__()
        self.request = request

    def __missing__(self, script):
        self[script] = self.request.getfixturevalue({PTQ: "ptq", QAT: "qat", CALLBACK: "callback_run"}[script])
        return self[script]


@pytest.fixture
def runs(request):
    return RunsByScript(request)


# Every path: trained, converted, tested twice, saved, reloaded, timed.
@pytest.mark.parametrize("script", [PTQ, QAT, CALLBACK])
def test_int8_accuracy_is_the_same_by_plain_loop_and_trainer_test(runs, script):
    out, output = runs[script]
    loop, trainer_test = both_routes(output)
    assert loop == trainer_test
    assert trainer_test > 0.5, output[-2000:]  # chance is 0.10
    fp32 = printed_accuracy(output, "fp32 accuracy")
    assert abs(fp32 - trainer_test) < 0.05  # int8 keeps the float model's accuracy
    row = results_row(out)
    assert row["int8_acc"] == pytest.approx(trainer_test, abs=5e-5)
    assert row["fp32_acc"] == pytest.approx(fp32, abs=5e-5)


@pytest.mark.parametrize("script", [PTQ, QAT, CALLBACK])
def test_results_row_has_sizes_and_latency(runs, script):
    out, _ = runs[script]
    row = results_row(out)
    fp32_kb, int8_kb = ((out / name).stat().st_size / 1024 for name in ("mnist_fp32.pt", "mnist_int8.pt"))
    assert row["fp32_kb"] == pytest.approx(fp32_kb) and row["int8_kb"] == pytest.approx(int8_kb)
    assert row["size_ratio"] <= 0.26  # int8 weights: a quarter of float32, plus a little metadata
    assert row["threads"] == 1 and row["backend"] == "x86"
    for batch in (1, 256):
        assert row[f"fp32_ms_b{batch}"] > 0 and row[f"int8_ms_b{batch}"] > 0
        assert row[f"speedup_b{batch}"] == pytest.approx(row[f"fp32_ms_b{batch}"] / row[f"int8_ms_b{batch}"])
        # The float model compiled as the PT2E int8 model is: what int8 adds over compiling alone.
        assert row[f"fp32_compiled_ms_b{batch}"] > 0
        assert row[f"speedup_compiled_b{batch}"] == pytest.approx(
            row[f"fp32_compiled_ms_b{batch}"] / row[f"int8_ms_b{batch}"])
        assert row[f"spread_b{batch}"] >= 0  # the widest interquartile range over median


@pytest.mark.parametrize("script", [PTQ, QAT, CALLBACK])
def test_reload_in_a_fresh_process_gives_the_same_accuracy(runs, script, mnist_dir, tmp_path):
    out, output = runs[script]
    reloaded = run_in(tmp_path, script, "--data_dir", mnist_dir, "--batch_size", "64",
                      "--load_int8", out / "mnist_int8.pt", check=True)
    assert both_routes(reloaded.out) == both_routes(output)
    assert not list(tmp_path.iterdir())  # testing a saved model writes nothing


@pytest.mark.parametrize("script", [PTQ, QAT, CALLBACK])
def test_deprecation_of_eager_quantization_is_shown_once(runs, script):
    _, output = runs[script]
    assert output.count(DEPRECATION) == 1  # shown (not hidden), but not repeated
    assert f"note: {DEPRECATION}" in output  # one line of the script's own, not torch's six


def test_ptq_wraps_the_float_network_in_stubs_and_fuses_it(runs):
    ptq_script = load_script(PTQ)
    assert not [m for m in ptq_script.MNISTConvBNNet().modules() if isinstance(m, (tq.QuantStub, tq.DeQuantStub))]
    wrapper = ptq_script.load_int8(str(runs[PTQ][0] / "mnist_int8.pt"), "eager")
    assert isinstance(wrapper.quant, nnq.Quantize) and isinstance(wrapper.dequant, nnq.DeQuantize)
    net = wrapper.net  # the float network's layers, now int8
    assert isinstance(net.features[0], nniq.ConvReLU2d)  # conv + bn + relu fused, BN folded
    assert isinstance(net.features[4], nniq.ConvReLU2d)
    assert isinstance(net.classifier[1], nniq.LinearReLU)
    assert isinstance(net.classifier[4], nnq.Linear)
    assert net.features[0].weight().dtype == torch.qint8


def test_converted_networks_hold_int8_modules(runs):
    qat_wrapper = load_script(QAT).load_int8_model(str(runs[QAT][0] / "mnist_int8.pt"), "eager")
    assert isinstance(qat_wrapper.quant, nnq.Quantize) and isinstance(qat_wrapper.dequant, nnq.DeQuantize)
    for net in (qat_wrapper.net,):
        assert isinstance(net.features[0], nniq.ConvReLU2d)  # conv + bn + relu fused, BN folded
        assert isinstance(net.features[4], nniq.ConvReLU2d)
        assert isinstance(net.classifier[1], nniq.LinearReLU)
        assert isinstance(net.classifier[4], nnq.Linear)
        assert net.features[0].weight().dtype == torch.qint8
    callback = load_script(CALLBACK)
    model = callback.MNISTClassifier()
    callback.load_int8_into(model, str(runs[CALLBACK][0] / "mnist_int8.pt"), "eager")
    assert isinstance(model.quant, nnq.Quantize) and isinstance(model.model.features[0], nniq.ConvReLU2d)


def test_log_softmax_runs_in_float_after_the_dequant_stub(runs):
    """The rule the README explains: log_softmax has no quantized CPU kernel, so the loss's
    log_softmax must come after the DeQuantStub, in float."""
    wrapper = load_script(PTQ).load_int8(str(runs[PTQ][0] / "mnist_int8.pt"), "eager")
    with torch.no_grad():
        logits = wrapper(torch.randn(4, 1, 28, 28))
        assert not logits.is_quantized and logits.shape == (4, 10)
        assert torch.allclose(torch.log_softmax(logits, dim=1).exp().sum(dim=1), torch.ones(4), atol=1e-4)
        quantized = wrapper.net.features(wrapper.quant(torch.randn(4, 1, 28, 28)))
        with pytest.raises(NotImplementedError, match="QuantizedCPU"):
            torch.log_softmax(quantized.flatten(1), dim=1)


def test_qat_writes_history_and_converts_its_last_epoch(qat):
    out, output = qat
    history = pd.read_csv(out / "history.csv")
    assert list(history["phase"]) == ["qat"]  # --ckpt: no float phase, one QAT epoch
    assert (out / "loss.png").is_file() and (out / "acc.png").is_file()
    assert not (out / "checkpoints").exists()  # the QAT phase converts its last epoch, saves no checkpoint


def test_qat_freezes_observers_and_batch_norm_from_the_chosen_epoch(mnist_dir, one_thread):
    qat_script = load_script(QAT)
    frozen = {}
    for freeze_epoch in (1, 5):
        model = qat_script.MNISTClassifier(data_dir=str(mnist_dir), batch_size=64, val_size=500,
                                           freeze_epoch=freeze_epoch)
        model.start_qat()
        trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.fit(model)
        fake_quants = [m for m in model.modules() if isinstance(m, tq.FakeQuantizeBase)]
        conv_bn = model.model.net.features[0]  # the float network inside QuantStubWrapper
        assert isinstance(conv_bn, nniqat.ConvBnReLU2d)
        frozen[freeze_epoch] = ({int(m.observer_enabled[0]) for m in fake_quants}, conv_bn.freeze_bn)
    assert frozen[1] == ({0}, True)  # epoch 1 ran frozen
    assert frozen[5] == ({1}, False)  # never reached: observers still on (validation switched them back)


# The callback's constructor options, each on a tiny fit.
@pytest.fixture(scope="module")
def callback_script():
    return load_script(CALLBACK)


def fit_with(callback_script, mnist_dir, epochs=1, **options):
    model = callback_script.MNISTClassifier(data_dir=str(mnist_dir), batch_size=64, val_size=500)
    qcb = callback_script.QuantizationAwareTraining(**options)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=3, limit_val_batches=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[qcb])
    trainer.fit(model)
    return model, qcb, trainer


def test_callback_fuses_the_named_modules(callback_script, mnist_dir, one_thread):
    fused, _, _ = fit_with(callback_script, mnist_dir, modules_to_fuse=callback_script.MODULES_TO_FUSE)
    assert isinstance(fused.model.features[0], nniq.ConvReLU2d)
    assert isinstance(fused.model.classifier[1], nniq.LinearReLU)
    unfused, _, _ = fit_with(callback_script, mnist_dir)  # default: nothing fused
    assert isinstance(unfused.model.features[0], nnq.Conv2d) and not isinstance(unfused.model.features[0],
                                                                                 nniq.ConvReLU2d)
    assert isinstance(unfused.model.features[1], nnq.BatchNorm2d)
    for model in (fused, unfused):
        assert not model(torch.randn(2, 1, 28, 28)).is_quantized  # input_compatible: float in, float out


def test_callback_without_quantize_on_fit_end_leaves_a_fake_quant_model(callback_script, mnist_dir, one_thread):
    model, qcb, _ = fit_with(callback_script, mnist_dir, modules_to_fuse=callback_script.MODULES_TO_FUSE,
                             quantize_on_fit_end=False, observer_type="histogram")
    assert isinstance(model.model.features[0], nniqat.ConvBnReLU2d)
    activation = model.quant.activation_post_process
    assert isinstance(activation, tq.FakeQuantize) and isinstance(activation.activation_post_process,
                                                                  tq.HistogramObserver)
    assert activation.quant_max == 127  # x86 keeps activations to 7 bits, like its default qconfig
    qcb.convert(model)  # what on_fit_end would have done
    assert isinstance(model.model.features[0], nniq.ConvReLU2d)


def test_callback_average_observer_is_the_default(callback_script, mnist_dir, one_thread):
    model, _, _ = fit_with(callback_script, mnist_dir, quantize_on_fit_end=False)
    observer = model.quant.activation_post_process.activation_post_process
    assert isinstance(observer, tq.MovingAverageMinMaxObserver)


def test_callback_not_input_compatible_takes_quantized_tensors(callback_script, mnist_dir, one_thread):
    model, _, _ = fit_with(callback_script, mnist_dir, input_compatible=False,
                           modules_to_fuse=callback_script.MODULES_TO_FUSE)
    images = torch.randn(2, 1, 28, 28)
    output = model(model.quant(images))  # the caller quantizes now
    assert output.is_quantized
    with pytest.raises((RuntimeError, NotImplementedError)):
        model(images)


def test_callback_observer_stages(callback_script, mnist_dir, one_thread):
    def input_range(model):
        observer = model.quant.activation_post_process.activation_post_process
        return observer.min_val.item(), observer.max_val.item()

    for stages, validation_moves_ranges in ((("train",), False), (("train", "validate"), True)):
        model, qcb, trainer = fit_with(callback_script, mnist_dir, quantize_on_fit_end=False,
                                       observer_enabled_stages=stages)
        before = input_range(model)
        model.setup("validate")
        shifted = torch.utils.data.TensorDataset(model.valid_set[:][0] * 3, model.valid_set[:][1])
        trainer.validate(model, torch.utils.data.DataLoader(shifted, batch_size=64), verbose=False)
        assert (input_range(model) != before) == validation_moves_ranges
        # Observers written under the Trainer's inference_mode must stay usable for training.
        assert not any(buffer.is_inference() for buffer in model.buffers())
        assert all(int(m.observer_enabled[0]) == 1 for m in model.modules() if isinstance(m, tq.FakeQuantizeBase))


def test_callback_rejects_bad_options(callback_script, mnist_dir):
    with pytest.raises(ValueError, match="qconfig"):
        callback_script.QuantizationAwareTraining(qconfig="tpu")
    with pytest.raises(ValueError, match="observer_type"):
        callback_script.QuantizationAwareTraining(observer_type="max")
    with pytest.raises(ValueError, match="stage"):
        callback_script.QuantizationAwareTraining(observer_enabled_stages=("fit",))
    qconfig = tq.get_default_qat_qconfig("x86")
    assert callback_script.QuantizationAwareTraining(qconfig=qconfig)._make_qconfig() is qconfig
    model = callback_script.MNISTClassifier(data_dir=str(mnist_dir))
    with pytest.raises(ValueError, match="model.features.9"):
        callback_script.QuantizationAwareTraining(modules_to_fuse=[["model.features.9"]]).prepare(model)


# PT2E: torch.export + torchao + torch.compile, with no eager entry point available.
EAGER_ENTRY_POINTS = ["prepare", "prepare_qat", "convert", "fuse_modules", "fuse_modules_qat", "get_default_qconfig",
                      "get_default_qat_qconfig", "QuantStub", "DeQuantStub", "QConfig", "FakeQuantize"]
# Runs a script (argv[1], its flags after it) as __main__ once every eager entry point raises when called.
WITHOUT_EAGER_API = f"""
import runpy, sys
import torch.ao.quantization as tq

def removed(name):
    def call(*args, **kwargs):
        raise RuntimeError(f"torch.ao.quantization.{{name}} was called")
    return call

for name in {EAGER_ENTRY_POINTS!r}:
    setattr(tq, name, removed(name))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_without_eager_api(cwd, script: str, *args) -> subprocess.CompletedProcess:
    """run_in, in a process where torch.ao.quantization's eager API is gone (its entry points raise)."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_EAGER_API, str(ROOT / script), *map(str, args)],
                            cwd=cwd, env=script_env(), capture_output=True, text=True, timeout=600)
    result.out = result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def ptq_pt2e(ptq, mnist_dir, tmp_path_factory):
    """The PTQ run's float checkpoint quantized by --flow pt2e, without the eager API."""
    pytest.importorskip("torchao.quantization.pt2e")  # also registers the ops a .pt2 program calls
    out = tmp_path_factory.mktemp("ptq_pt2e")
    # Batch 100 divides the 500 test images: one batch size, so torch.compile builds one graph.
    result = run_without_eager_api(out, PTQ, "--data_dir", mnist_dir, "--output_dir", out, "--batch_size", "100",
                                   "--val_size", "500", "--ckpt", ptq[0] / "checkpoints" / "best.ckpt",
                                   "--flow", "pt2e", "--calibration_batches", "4", "--latency_repeats", "0")
    assert result.returncode == 0, result.out[-3000:]
    return out, result.out


def test_eager_api_removal_is_real(monkeypatch):
    """The patch that run_without_eager_api applies does stop the eager flow: the check is not vacuous."""
    wrapper = {}
    exec(WITHOUT_EAGER_API.split("for name in")[0], wrapper)  # its removed(), without patching anything
    for name in EAGER_ENTRY_POINTS:
        monkeypatch.setattr(tq, name, wrapper["removed"](name))
    ptq_script = load_script(PTQ)
    with pytest.raises(RuntimeError, match="torch.ao.quantization.QuantStub was called"):
        ptq_script.quantize_eager(ptq_script.MNISTConvBNNet(), "x86", [])


def test_pt2e_flow_quantizes_and_saves_a_program_without_the_eager_api(ptq_pt2e):
    out, output = ptq_pt2e
    loop, trainer_test = both_routes(output)
    assert loop == trainer_test > 0.5
    assert abs(printed_accuracy(output, "fp32 accuracy") - trainer_test) < 0.05
    assert DEPRECATION not in output  # the eager flow never ran
    row = results_row(out)
    assert row["method"] == "PTQ PT2E" and row["int8_acc"] == pytest.approx(trainer_test, abs=5e-5)
    assert row["size_ratio"] < 0.35  # int8 weights plus the program's graph
    assert row["int8_kb"] == pytest.approx(program_kb(out / "mnist_int8.pt2"), abs=1)
    program = torch.export.load(out / "mnist_int8.pt2")
    assert any(t.dtype == torch.int8 for t in program.state_dict.values())
    assert not any(t.dtype == torch.float32 and t.dim() == 2 for t in program.state_dict.values())  # no float copies
    assert not (out / "mnist_int8.pt").exists()


def test_pt2e_program_reloads_in_a_fresh_process_to_the_same_accuracy(ptq_pt2e, mnist_dir, tmp_path):
    out, output = ptq_pt2e
    reloaded = run_without_eager_api(tmp_path, PTQ, "--data_dir", mnist_dir, "--batch_size", "100",
                                     "--load_int8", out / "mnist_int8.pt2")
    assert reloaded.returncode == 0, reloaded.out[-3000:]
    assert both_routes(reloaded.out) == both_routes(output)
    assert not list(tmp_path.iterdir())  # testing a saved model writes nothing


def test_pt2e_without_torchao_says_how_to_install_it(monkeypatch, capsys):
    ptq_script = load_script(PTQ)
    for name in [name for name in sys.modules if name.startswith("torchao")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)  # what an environment without torchao sees
    with pytest.raises(SystemExit) as exit_info:
        ptq_script.pt2e_api()
    assert exit_info.value.code == 2
    assert "pip install torchao" in capsys.readouterr().err


def test_eager_flow_without_torch_ao_quantization_points_to_pt2e(monkeypatch, capsys):
    ptq_script = load_script(PTQ)
    monkeypatch.setattr(ptq_script, "tq", None)  # a torch that no longer has it
    result = exit_of(lambda argv: ptq_script.quantize_eager(ptq_script.MNISTConvBNNet(), "x86", []), [], capsys)
    assert_clean_error(result, "torch.ao.quantization", "--flow pt2e")


# Hostile .pt2 files and checkpoints: tests/test_security.py.


# Bad input to the PTQ script: one clean line, exit 2, and an earlier run's folder left as it was.
@pytest.fixture(scope="module")
def bad_files(ptq, ptq_pt2e, tmp_path_factory):
    """Files a careless or hostile user could pass, next to the real ones."""
    folder = tmp_path_factory.mktemp("bad_files")
    eager = torch.load(ptq[0] / "mnist_int8.pt", weights_only=True)
    for name, change in (("bogus_backend", {"backend": "tpu"}), ("negative_hidden", {"hidden_units": -1}),
                         ("text_hidden", {"hidden_units": "256"})):
        torch.save({**eager, **change}, folder / f"{name}.pt")
    (folder / "random.pt2").write_bytes(bytes(range(256)) * 8)
    program = (ptq_pt2e[0] / "mnist_int8.pt2").read_bytes()
    (folder / "truncated.pt2").write_bytes(program[:len(program) // 2])
    torch.export.save(torch.export.export(torch.nn.Linear(5, 3), (torch.zeros(2, 5),)), folder / "foreign.pt2")
    (folder / "garbage.ckpt").write_bytes(b"not a checkpoint")
    files = {"eager": ptq[0] / "mnist_int8.pt", "fp32": ptq[0] / "mnist_fp32.pt", "pt2": ptq_pt2e[0] / "mnist_int8.pt2",
             "fp32_pt2": ptq_pt2e[0] / "mnist_fp32.pt2"}
    return {**files, **{path.stem: path for path in folder.iterdir()}}


@pytest.fixture
def earlier_run(tmp_path):
    """An output folder holding an earlier run's files; returns it and a snapshot of its contents."""
    out = tmp_path / "earlier"
    for name, data in (("checkpoints/best.ckpt", b"earlier checkpoint"), ("mnist_int8.pt", b"earlier int8"),
                       ("mnist_int8.pt2", b"earlier program"), ("quant_results.csv", b"method\nearlier\n")):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return out, snapshot(out)


def snapshot(folder) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


PTQ_BAD_INPUT = [  # flags, then what the error line must name; {name} is a file of bad_files
    (["--flow", "bogus"], "--flow"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "nan"], "--lr"),
    (["--seed", "-1"], "--seed"),
    (["--batch_size", "0"], "--batch_size"),
    (["--test-batch-size", "0"], "--eval_batch_size"),  # the original tutorial's spelling, the same error
    (["--log-interval", "0"], "--log-interval"),
    (["--gamma", "fast"], "--gamma"),
    (["--calibration_batches", "0"], "--calibration_batches"),
    (["--threads", "0"], "--threads"),
    (["--latency_repeats", "-1"], "--latency_repeats"),
    (["--num_workers", "-1"], "--num_workers"),
    (["--fast_dev_run", "-1"], "--fast_dev_run"),
    (["--devices", "0"], "devices"),
    (["--devices", "abc"], "devices"),
    (["--limit_train_batches", "0"], "--limit_train_batches"),
    (["--limit_val_batches", "0"], "--limit_val_batches"),
    (["--limit_test_batches", "0"], "--limit_test_batches"),
    (["--limit_train_batches", "-1"], "--limit_train_batches"),
    (["--val_size", "3000"], "leaves no training images"),  # the synthetic set has 3000
    (["--accelerator", "tpu"], "cannot build the Trainer"),
    (["--precision", "bogus"], "cannot build the Trainer"),
    (["--ckpt", "missing.ckpt"], "no such file"),
    (["--ckpt", "{garbage}"], "cannot read"),
    (["--load_model", "{garbage}", "--ckpt", "{fp32}"], "pass one of them"),
    (["--load_int8", "{fp32}"], "not an int8 model"),
    (["--load_int8", "{bogus_backend}"], "quantized engine 'tpu'"),
    (["--load_int8", "{negative_hidden}"], "hidden_units -1"),
    (["--load_int8", "{text_hidden}"], "hidden_units '256'"),
    (["--flow", "pt2e", "--load_int8", "{eager}"], "saved by --flow eager"),
    (["--flow", "eager", "--load_int8", "{pt2}"], "saved by --flow pt2e"),
    (["--load_int8", "{truncated}"], "cannot read"),
    (["--load_int8", "{random}"], "cannot read"),
    (["--load_int8", "{foreign}"], "no single mnist_int8/state.pt"),  # a program from elsewhere: never loaded
    (["--load_int8", "{fp32_pt2}"], "no single mnist_int8/state.pt"),
    (["--output_dir", "{eager}"], "not a folder"),
    (["--lr", "1e308"], "--lr 1e+308 is too large"),
    (["--limit_train_batches", "0.000001"], "less than one batch"),
    (["--limit_test_batches", "1e-9"], "less than one batch"),
    (["--batch_size", "100000000"], "a batch of 100000000"),
]


@pytest.mark.parametrize("argv, phrase", PTQ_BAD_INPUT, ids=[" ".join(argv) for argv, _ in PTQ_BAD_INPUT])
def test_ptq_bad_input_is_one_clean_line(argv, phrase, bad_files, earlier_run, mnist_dir, capsys):
    out, before = earlier_run
    argv = [arg.format(**{name: str(path) for name, path in bad_files.items()}) for arg in argv]
    flags = ["--data_dir", mnist_dir, "--val_size", "500", "--batch_size", "100", "--output_dir", out]
    result = exit_of(load_script(PTQ).main, flags + argv, capsys)  # the last --val_size / --output_dir wins
    assert_clean_error(result, phrase)
    assert snapshot(out) == before


def float_weights_of_the_wrong_shape(folder) -> dict:
    """--ckpt files that torch.load(weights_only=True) reads, holding something other than a state_dict."""
    good = load_script(PTQ).MNISTConvBNNet().state_dict()
    contents = {"int_keys.pt": dict(enumerate(good.values())), "a_list.pt": list(good.values()),
                "a_float.pt": good | {"classifier.1.weight": 0.5},
                "ckpt_int_keys.ckpt": {"epoch": 0, "state_dict": {0: torch.zeros(1)}},
                "ckpt_list.ckpt": {"epoch": 0, "state_dict": [torch.zeros(1)]},
                "meta.pt": load_script(PTQ).MNISTConvBNNet().to("meta").state_dict()}
    for name, content in contents.items():
        torch.save(content, folder / name)
    return {name: folder / name for name in contents}


@pytest.mark.parametrize("script", [PTQ, QAT, CALLBACK])
def test_float_weights_of_the_wrong_shape_are_refused(script, mnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, path in float_weights_of_the_wrong_shape(tmp_path).items():
        result = exit_of(load_script(script).main, ["--data_dir", mnist_dir, "--ckpt", path], capsys)
        assert_clean_error(result, name, "weights")


# The original tutorial's flags (issue 13): each keeps its meaning or says what it does now.
def test_ptq_accepts_the_original_tutorials_flags(bad_files, capsys):
    ptq_script = load_script(PTQ)
    args = ptq_script.parse_args(["--no-cuda", "--test", "--gamma", "0.7", "--log-interval", "10",
                                  "--test-batch-size", "1000", "--save_model", "--load_model", str(bad_files["fp32"])])
    notes = capsys.readouterr().err
    assert args.accelerator == "cpu" and args.eval_batch_size == 1000
    assert args.ckpt == str(bad_files["fp32"])  # --load_model: the float weights to quantize
    for flag in ("--no-cuda", "--test", "--gamma", "--log-interval", "--save_model"):
        assert f"note: {flag} (from the original tutorial)" in notes, flag
    assert ptq_script.parse_args(["--load_int8", str(bad_files["pt2"])]).flow == "pt2e"  # read from the file
    assert ptq_script.parse_args([]).flow == "eager"
    assert ptq_script.main(["--named_modules", "--named_parameters"]) == 0
    structure = capsys.readouterr().out
    assert "MNISTConvBNNet" in structure and "model.features.0.weight" in structure


@pytest.mark.slow
def test_ptq_sigterm_during_training_exits_143_and_quantizes_nothing(mnist_dir, tmp_path):
    """A scheduler's stop: not a success (0), nothing quantized from a half-trained model, the best file loads."""
    out = tmp_path / "ptq"
    result = interrupt(tmp_path, PTQ, "--data_dir", mnist_dir, "--output_dir", out, "--epochs", "50", "--batch_size", "64",
                       "--val_size", "500", when=(out / "checkpoints" / "best.ckpt").exists)
    output = result.out
    assert result.returncode == 143, output[-2000:]
    assert "interrupted by SIGTERM" in output and "Traceback" not in output
    assert "fp32 accuracy" not in output and not list(out.glob("mnist_*"))
    assert torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] < 49
    assert not list((out / "checkpoints").glob(".*partial"))


def test_results_file_keeps_earlier_rows_with_other_columns(tmp_path, capsys):
    ptq_script = load_script(PTQ)
    results = tmp_path / "quant_results.csv"
    results.write_text("method,backend,threads,fp32_acc,int8_acc,speedup_b256\nPTQ eager,x86,2,0.99,0.98,2.0\n")
    ptq_script.append_result({"method": "PTQ PT2E", "backend": "x86 inductor", "threads": 1, "fp32_acc": 0.9,
                              "int8_acc": 0.8, "fp32_compiled_ms_b256": 3.0}, results)
    table = pd.read_csv(results)
    assert list(table["method"]) == ["PTQ eager", "PTQ PT2E"]
    assert table["speedup_b256"][0] == 2.0 and table["fp32_compiled_ms_b256"][1] == 3.0
    assert not list(tmp_path.glob(".*partial"))


def test_results_file_survives_a_full_disk(tmp_path, capsys, monkeypatch):
    """The results table goes through save_atomically: a full disk is one line and the earlier table stays."""
    results = tmp_path / "quant_results.csv"
    results.write_text("method,int8_acc\nPTQ eager,0.98\n")

    def fills_up(table, file, **kwargs):  # half a table, then the disk is full
        file.write(b"method,int8_acc\nPTQ")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", fills_up)
    result = exit_of(lambda argv: load_script(PTQ).append_result({"method": "PTQ PT2E", "threads": 1}, results),
                     [], capsys)
    assert_clean_error(result, "cannot write", "quant_results.csv", "No space left on device", "untouched")
    assert results.read_text() == "method,int8_acc\nPTQ eager,0.98\n"
    assert not list(tmp_path.glob(".*partial"))
def fabricated_timings(int8_ms: list, batches=(1, 256)) -> dict:
    """{(model, batch): ms per call} as measure_latency collects them: fp32 2 ms, compiled 1.5 ms, int8 as given."""
    return {(name, batch): list(ms) for batch in batches
            for name, ms in (("fp32", [2.0] * len(int8_ms)), ("fp32_compiled", [1.5] * len(int8_ms)),
                             ("int8", int8_ms))}


def test_latency_reports_median_spread_and_threads(capsys):
    summary = load_script(PTQ).latency_summary
    quiet = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0, 1.0]  # within 2%: an idle machine
    result = summary(fabricated_timings(quiet), threads=4)
    captured = capsys.readouterr()
    assert result["int8_ms_b1"] == pytest.approx(1.0) and result["speedup_b1"] == pytest.approx(2.0)
    assert result["speedup_compiled_b256"] == pytest.approx(1.5)
    assert 0 < result["spread_b1"] < 0.05
    lines = [line for line in captured.out.splitlines() if line.startswith("latency at batch")]
    assert len(lines) == 2, captured.out
    for line in lines:
        assert "median (interquartile range) of 10" in line and "4 CPU threads" in line
        assert "int8 1 (0.99-1.01)" in line and "fp32 2 (2-2)" in line
    assert "warning" not in captured.out + captured.err


def test_latency_warns_once_when_the_spread_says_the_machine_was_busy(capsys):
    summary = load_script(PTQ).latency_summary
    # A neighbour took the CPU for part of the run: the same forward took 1 ms or 80 ms.
    busy = [1.0, 80.0, 1.1, 60.0, 0.9, 75.0, 1.0, 1.2, 70.0, 1.0]
    result = summary(fabricated_timings(busy, batches=(1,)), threads=2)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "busy" in warnings[0] and "idle machine" in warnings[0]
    assert result["spread_b1"] > load_script(PTQ).LATENCY_BUSY
    assert result["int8_ms_b1"] == pytest.approx(statistics.median(busy))


def test_one_timed_call_has_no_spread(capsys):
    result = load_script(PTQ).latency_summary(fabricated_timings([1.0], batches=(1,)), threads=1)
    assert result["spread_b1"] == 0 and result["int8_ms_b1"] == 1.0


# Bad input: one clean line, exit 2.
def test_errors_are_one_clean_line(ptq, run_script, tmp_path):
    out, _ = ptq
    assert_clean_error(run_script(CALLBACK, "--load_int8", out / "mnist_int8.pt"), "not an int8 model")
    assert_clean_error(run_script(QAT, "--ckpt", tmp_path / "missing.ckpt"), "--ckpt", "no such file")
