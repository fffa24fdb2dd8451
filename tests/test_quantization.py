"""The three int8 paths: PTQ (eager and PT2E), QAT inside a LightningModule, and the QAT callback.

The scripts are trained once per module on the synthetic MNIST (the QAT runs start from the PTQ run's
float checkpoint); the callback's constructor options are checked in-process on tiny fits.
"""
import sys

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq

from conftest import QUICK, assert_clean_error, load_script, printed_accuracy, run_in

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


@pytest.fixture(scope="module")
def runs(ptq, qat, callback_run):
    return {PTQ: ptq, QAT: qat, CALLBACK: callback_run}


@pytest.fixture
def one_thread():
    """In-process fits share the machine with another pytest worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.mark.parametrize("script", [PTQ, QAT, CALLBACK])
def test_reload_in_a_fresh_process_gives_the_same_accuracy(runs, script, mnist_dir, tmp_path):
    out, output = runs[script]
    reloaded = run_in(tmp_path, script, "--data_dir", mnist_dir, "--batch_size", "64",
                      "--load_int8", out / "mnist_int8.pt", check=True)
    assert both_routes(reloaded.out) == both_routes(output)
    assert printed_accuracy(reloaded.out) == printed_accuracy(output)
    assert not list(tmp_path.iterdir())  # testing a saved model writes nothing


@pytest.mark.parametrize("script", [PTQ, QAT, CALLBACK])
def test_deprecation_of_eager_quantization_is_shown_once(runs, script):
    _, output = runs[script]
    assert output.count(DEPRECATION) == 1  # shown (not hidden), but not repeated


def test_converted_networks_hold_int8_modules(runs):
    ptq_net = load_script(PTQ).load_int8(str(runs[PTQ][0] / "mnist_int8.pt"))
    qat_net = load_script(QAT).load_int8(str(runs[QAT][0] / "mnist_int8.pt"))
    for net in (ptq_net, qat_net):
        assert isinstance(net.quant, nnq.Quantize) and isinstance(net.dequant, nnq.DeQuantize)
        assert isinstance(net.features[0], nniq.ConvReLU2d)  # conv + bn + relu fused, BN folded
        assert isinstance(net.features[4], nniq.ConvReLU2d)
        assert isinstance(net.classifier[1], nniq.LinearReLU)
        assert isinstance(net.classifier[4], nnq.Linear)
        assert net.features[0].weight().dtype == torch.qint8
    callback = load_script(CALLBACK)
    model = callback.MNISTClassifier()
    callback.load_int8(model, str(runs[CALLBACK][0] / "mnist_int8.pt"))
    assert isinstance(model.quant, nnq.Quantize) and isinstance(model.model.features[0], nniq.ConvReLU2d)


def test_log_softmax_runs_in_float_after_the_dequant_stub(runs):
    """The rule the README explains: log_softmax has no quantized CPU kernel."""
    net = load_script(PTQ).load_int8(str(runs[PTQ][0] / "mnist_int8.pt"))
    with torch.no_grad():
        log_probs = net(torch.randn(4, 1, 28, 28))
        assert not log_probs.is_quantized
        assert torch.allclose(log_probs.exp().sum(dim=1), torch.ones(4), atol=1e-4)
        quantized = net.features(net.quant(torch.randn(4, 1, 28, 28)))
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
        model.prepare_qat()
        trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.fit(model)
        fake_quants = [m for m in model.modules() if isinstance(m, tq.FakeQuantizeBase)]
        conv_bn = model.model.features[0]
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
    fused, _, _ = fit_with(callback_script, mnist_dir, modules_to_fuse=callback_script.FUSE_GROUPS)
    assert isinstance(fused.model.features[0], nniq.ConvReLU2d)
    assert isinstance(fused.model.classifier[1], nniq.LinearReLU)
    unfused, _, _ = fit_with(callback_script, mnist_dir)  # default: nothing fused
    assert isinstance(unfused.model.features[0], nnq.Conv2d) and not isinstance(unfused.model.features[0],
                                                                                 nniq.ConvReLU2d)
    assert isinstance(unfused.model.features[1], nnq.BatchNorm2d)
    for model in (fused, unfused):
        assert not model(torch.randn(2, 1, 28, 28)).is_quantized  # input_compatible: float in, float out


def test_callback_without_quantize_on_fit_end_leaves_a_fake_quant_model(callback_script, mnist_dir, one_thread):
    model, qcb, _ = fit_with(callback_script, mnist_dir, modules_to_fuse=callback_script.FUSE_GROUPS,
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
                           modules_to_fuse=callback_script.FUSE_GROUPS)
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


# PT2E: torch.export + torchao + torch.compile.
def test_pt2e_flow_quantizes_saves_and_reloads(ptq, mnist_dir, tmp_path):
    pytest.importorskip("torchao.quantization.pt2e")  # also registers the ops a .pt2 program calls
    ckpt = ptq[0] / "checkpoints" / "best.ckpt"
    # Batch 100 divides the 500 test images: one batch size, so torch.compile builds one graph.
    flags = ("--data_dir", mnist_dir, "--batch_size", "100")
    result = run_in(tmp_path, PTQ, *flags, "--output_dir", tmp_path / "pt2e", "--ckpt", ckpt, "--flow", "pt2e",
                    "--calibration_batches", "4", "--latency_repeats", "0", check=True)
    loop, trainer_test = both_routes(result.out)
    assert loop == trainer_test > 0.5
    row = results_row(tmp_path / "pt2e")
    assert row["method"] == "PTQ PT2E" and row["size_ratio"] < 0.35  # int8 weights plus the program's graph
    program = torch.export.load(tmp_path / "pt2e" / "mnist_int8.pt2")
    assert any(t.dtype == torch.int8 for t in program.state_dict.values())
    assert not any(t.dtype == torch.float32 and t.dim() == 2 for t in program.state_dict.values())  # no float copies
    reloaded = run_in(tmp_path, PTQ, *flags, "--load_int8", tmp_path / "pt2e" / "mnist_int8.pt2", check=True)
    assert printed_accuracy(reloaded.out) == trainer_test


def test_pt2e_without_torchao_says_how_to_install_it(monkeypatch, capsys):
    ptq_script = load_script(PTQ)
    for name in [name for name in sys.modules if name.startswith("torchao")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)  # what an environment without torchao sees
    with pytest.raises(SystemExit) as exit_info:
        ptq_script.pt2e_api()
    assert exit_info.value.code == 2
    assert "pip install torchao" in capsys.readouterr().err


# Bad input: one clean line, exit 2.
def test_errors_are_one_clean_line(ptq, run_script, tmp_path):
    out, _ = ptq
    assert_clean_error(run_script(PTQ, "--load_int8", out / "mnist_fp32.pt"), "not an int8 model")
    assert_clean_error(run_script(CALLBACK, "--load_int8", out / "mnist_int8.pt"), "not an int8 model")
    assert_clean_error(run_script(QAT, "--ckpt", tmp_path / "missing.ckpt"), "--ckpt", "no such file")
