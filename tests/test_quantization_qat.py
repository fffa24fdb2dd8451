"""QAT without torch.ao.quantization: the PT2E flow of quant_lightning_qat.py and the PT2E mode of the
QuantizationAwareTraining callback in quant_with_only_lightning.py, plus both scripts' bad input.

The end-to-end runs happen in a process where every eager entry point raises when called
(run_without_eager_quantization below), so they prove these routes survive the removal of eager
quantization from torch. convert_pt2e of a QAT graph takes about a minute on a CPU (torchao traces its
conv-bn patterns), so each script runs once per module, briefly, and the other tests reuse its files.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import assert_clean_error, exit_of, interrupt, load_script, printed_accuracy, program_kb, script_env

QAT, CALLBACK = "quant_lightning_qat.py", "quant_with_only_lightning.py"
# The eager API the issue lists, made unavailable: what a torch without torch.ao.quantization leaves.
EAGER_ENTRY_POINTS = ("prepare", "prepare_qat", "convert", "fuse_modules", "fuse_modules_qat",
                      "get_default_qconfig", "get_default_qat_qconfig", "get_default_qconfig_mapping",
                      "get_default_qat_qconfig_mapping", "QuantStub", "DeQuantStub", "QConfig", "FakeQuantize")
DEPRECATION = "torch.ao.quantization is deprecated"
# Brief runs on the synthetic set: 10 training batches per epoch, one compiled test batch size.
TINY = ("--batch_size", "64", "--eval_batch_size", "100", "--val_size", "500", "--limit_train_batches", "10",
        "--limit_val_batches", "2", "--latency_repeats", "0", "--threads", "1")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="the PT2E flow needs torchao")


def remove_eager_quantization() -> None:
    """Every eager entry point of torch.ao.quantization raises from now on, in this process."""
    import torch.ao.quantization as tq

    for name in EAGER_ENTRY_POINTS:
        def removed(*args, _name=name, **kwargs):
            raise RuntimeError(f"torch.ao.quantization.{_name} was called: the PT2E route must not need it")
        setattr(tq, name, removed)


def run_without_eager_quantization(cwd: Path, script: str, *args, timeout: int = 1200):
    """Run script's main(args) in a fresh process whose eager quantization API raises when called."""
    command = [sys.executable, __file__, script, *map(str, args)]
    result = subprocess.run(command, cwd=cwd, env=script_env(), capture_output=True, text=True, timeout=timeout)
    result.out = result.stdout + result.stderr
    return result


def both_routes(output: str) -> tuple:
    return (printed_accuracy(output, "int8 accuracy, plain PyTorch loop"),
            printed_accuracy(output, "int8 accuracy, Trainer.test"))


def results_row(out: Path) -> dict:
    table = pd.read_csv(out / "quant_results.csv")
    assert len(table) == 1
    return table.iloc[0].to_dict()


@pytest.fixture(scope="module")
def qat_pt2e(mnist_dir, tmp_path_factory):
    """quant_lightning_qat.py --flow pt2e: one brief float epoch, two QAT epochs (the second frozen)."""
    out = tmp_path_factory.mktemp("qat_pt2e")
    result = run_without_eager_quantization(out, QAT, "--data_dir", mnist_dir, "--output_dir", out, "--flow", "pt2e",
                                            "--epochs", "1", "--qat_epochs", "2", "--freeze_epoch", "1", *TINY)
    assert result.returncode == 0, result.out[-3000:]
    return out, result.out


@pytest.fixture(scope="module")
def callback_pt2e(mnist_dir, qat_pt2e, tmp_path_factory):
    """quant_with_only_lightning.py --flow pt2e: one QAT epoch from the QAT run's float checkpoint."""
    out = tmp_path_factory.mktemp("callback_pt2e")
    result = run_without_eager_quantization(out, CALLBACK, "--data_dir", mnist_dir, "--output_dir", out,
                                            "--flow", "pt2e", "--ckpt", qat_pt2e[0] / "checkpoints" / "best.ckpt",
                                            "--qat_epochs", "1", *TINY)
    assert result.returncode == 0, result.out[-3000:]
    return out, result.out


@pytest.fixture(scope="module")
def runs(qat_pt2e, callback_pt2e):
    return {QAT: qat_pt2e, CALLBACK: callback_pt2e}


# The PT2E routes, end to end, with the eager API gone.
@pytest.mark.slow
@pytest.mark.parametrize("script, method", [(QAT, "QAT PT2E"), (CALLBACK, "QAT callback PT2E")])
def test_pt2e_flow_runs_without_eager_quantization(runs, script, method):
    out, output = runs[script]
    loop, trainer_test = both_routes(output)
    assert loop == trainer_test > 0.3, output[-2000:]  # chance is 0.10
    assert DEPRECATION not in output  # nothing of the eager route ran, not even its note
    row = results_row(out)
    assert row["method"] == method and row["backend"] == "x86 inductor"
    assert row["int8_acc"] == pytest.approx(trainer_test, abs=5e-5)
    assert row["fp32_acc"] == pytest.approx(printed_accuracy(output, "fp32 accuracy"), abs=5e-5)
    fp32_kb, int8_kb = (out / "mnist_fp32.pt2").stat().st_size / 1024, program_kb(out / "mnist_int8.pt2")
    assert row["fp32_kb"] == pytest.approx(fp32_kb) and row["int8_kb"] == pytest.approx(int8_kb, abs=1)
    assert row["size_ratio"] <= 0.30  # int8 weights and the program's graph, no float copies
    assert not list(out.glob("*.pt"))  # the eager files are not written


@pytest.mark.slow
@pytest.mark.parametrize("script", [QAT, CALLBACK])
def test_pt2e_program_holds_int8_weights_and_no_float_copies(runs, script):
    import torchao.quantization.pt2e  # noqa: F401  (registers the operators the program calls)
    program = torch.export.load(runs[script][0] / "mnist_int8.pt2")
    tensors = list(program.state_dict.values()) + list(program.constants.values())
    assert sum(t.dtype == torch.int8 for t in tensors) == 4  # two convs, two linears
    assert not any(t.dtype == torch.float32 and t.dim() >= 2 for t in tensors)  # weights only as int8
    assert not any(name.endswith(("running_mean", "running_var")) for name in program.state_dict)  # BN folded


@pytest.mark.slow
@pytest.mark.parametrize("script", [QAT, CALLBACK])
def test_pt2e_reload_in_a_fresh_process_gives_the_same_accuracy(runs, script, mnist_dir, tmp_path):
    out, output = runs[script]
    # --flow follows from the file; the eager API stays unavailable while loading, too.
    reloaded = run_without_eager_quantization(tmp_path, script, "--data_dir", mnist_dir, "--eval_batch_size", "100",
                                              "--load_int8", out / "mnist_int8.pt2")
    assert reloaded.returncode == 0, reloaded.out[-3000:]
    assert both_routes(reloaded.out) == both_routes(output)
    assert not list(tmp_path.iterdir())  # testing a saved model writes nothing


@pytest.mark.slow
def test_qat_pt2e_history_has_both_phases(qat_pt2e):
    out, _ = qat_pt2e
    history = pd.read_csv(out / "history.csv")
    assert list(history["phase"]) == ["fp32", "qat", "qat"]
    assert history["valid_acc"].iloc[-1] > 0.3
    assert (out / "acc.png").is_file() and (out / "checkpoints" / "best.ckpt").is_file()


def test_the_removed_eager_api_really_raises(monkeypatch):
    """The helper above is not vacuous: with it, the eager routes of both scripts fail at once."""
    qat, callback = load_script(QAT), load_script(CALLBACK)
    import torch.ao.quantization as tq

    for name in EAGER_ENTRY_POINTS:  # monkeypatch undoes what remove_eager_quantization does
        monkeypatch.setattr(tq, name, getattr(tq, name))
    remove_eager_quantization()
    with pytest.raises(RuntimeError, match="QuantStub"):
        qat.EagerQAT("x86").prepare(qat.MNISTConvBNNet())
    with pytest.raises((RuntimeError, TypeError)):  # TypeError: QConfig is no class any more
        callback.QuantizationAwareTraining(flow="eager").prepare(callback.MNISTClassifier())


# PT2E QAT inside the LightningModule: the freeze late in QAT.
class RecordBatchNorm(pl.Callback):
    """The first batch norm's running mean and the input's int8 scale, at every epoch's start and end."""

    def __init__(self):
        self.seen = []

    def record(self, pl_module):
        graph = pl_module.model
        fake_quants = [m for name, m in graph.named_children() if name.startswith("activation_post_process")]
        self.seen.append((graph.get_buffer("features.1.running_mean").clone(),
                          torch.stack([m.scale.sum() for m in fake_quants])))

    def on_train_epoch_start(self, trainer, pl_module):
        self.record(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self.record(pl_module)


def test_pt2e_qat_freezes_observers_and_batch_norm_from_the_chosen_epoch(mnist_dir, one_thread):
    qat = load_script(QAT)
    model = qat.MNISTClassifier(data_dir=str(mnist_dir), batch_size=64, val_size=500, flow="pt2e", freeze_epoch=1)
    model.start_qat()
    recorder = RecordBatchNorm()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[recorder])
    trainer.fit(model)
    (mean0, scales0), (mean0_end, scales0_end), (mean1, scales1), (mean1_end, scales1_end) = recorder.seen
    assert not torch.equal(mean0, mean0_end) and not torch.equal(scales0, scales0_end)  # epoch 0 learns ranges
    assert torch.equal(mean0_end, mean1)  # validation moved nothing
    assert torch.equal(mean1, mean1_end) and torch.equal(scales1, scales1_end)  # epoch 1 ran frozen
    from torchao.quantization.pt2e import FakeQuantizeBase
    assert all(int(m.observer_enabled[0]) == 0 for m in model.modules() if isinstance(m, FakeQuantizeBase))
    # After the last validation the graph was switched back to training (and would be frozen again at
    # the next epoch's start): torchao rewrote its batch_norm ops to training=True.
    batch_norms = [node for node in model.model.graph.nodes if node.target is torch.ops.aten.batch_norm.default]
    assert len(batch_norms) == 2 and all(node.args[5] is True for node in batch_norms)


# The callback's PT2E mode: options, and a checkpoint saved mid-QAT that resumes.
@pytest.fixture(scope="module")
def callback_script():
    return load_script(CALLBACK)


def quick_trainer(tmp_path: Path, callbacks: list) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=callbacks)


class StopAfterFirstEpoch(pl.Callback):
    """A run killed mid-QAT: it stops after epoch 0 of 2, leaving last.ckpt behind."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


class RecordRestored(pl.Callback):
    """The module as restored (before the sanity check's validation counts a batch in batch norm), and
    where the loop goes on from."""

    def on_fit_start(self, trainer, pl_module):
        self.restored = {name: tensor.clone() for name, tensor in pl_module.state_dict().items()}

    def on_train_start(self, trainer, pl_module):
        self.epoch, self.step = trainer.current_epoch, trainer.global_step


def test_callback_pt2e_checkpoint_saved_mid_qat_resumes(callback_script, mnist_dir, tmp_path, one_thread):
    def module():
        return callback_script.MNISTClassifier(data_dir=str(mnist_dir), batch_size=64, val_size=500)

    killed = module()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    qcb = callback_script.QuantizationAwareTraining(flow="pt2e", quantize_on_fit_end=False)
    quick_trainer(tmp_path, [qcb, checkpoint, StopAfterFirstEpoch()]).fit(killed)
    saved = {name: tensor.clone() for name, tensor in killed.state_dict().items()}
    assert any("activation_post_process" in name for name in saved)  # fake-quant ranges are in the checkpoint

    resumed, recorder = module(), RecordRestored()  # a new process: a float module and a new callback
    again = callback_script.QuantizationAwareTraining(flow="pt2e", quantize_on_fit_end=False)
    trainer = quick_trainer(tmp_path, [again, recorder])
    trainer.fit(resumed, ckpt_path=tmp_path / "last.ckpt")
    assert recorder.restored.keys() == saved.keys()
    changed = [name for name in saved if not torch.equal(recorder.restored[name], saved[name])]
    assert not changed  # weights, batch-norm statistics, int8 ranges
    assert (recorder.epoch, recorder.step) == (1, 3)  # it continued, not restarted
    assert trainer.global_step == 6 and isinstance(resumed.model, torch.fx.GraphModule)
    assert not torch.equal(resumed.model.get_parameter("features.0.weight"), saved["model.features.0.weight"])


def test_callback_pt2e_rejects_eager_only_options(callback_script):
    QuantizationAwareTraining = callback_script.QuantizationAwareTraining
    with pytest.raises(ValueError, match="modules_to_fuse"):
        QuantizationAwareTraining(flow="pt2e", modules_to_fuse=callback_script.MODULES_TO_FUSE)
    with pytest.raises(ValueError, match="input_compatible"):
        QuantizationAwareTraining(flow="pt2e", input_compatible=False)
    with pytest.raises(ValueError, match="qconfig"):
        QuantizationAwareTraining(flow="pt2e", qconfig="fbgemm")
    with pytest.raises(ValueError, match="flow"):
        QuantizationAwareTraining(flow="fx")
    with pytest.raises(ValueError, match="network"):
        QuantizationAwareTraining(flow="pt2e", network="backbone").prepare(callback_script.MNISTClassifier())


def test_callback_pt2e_histogram_observer(callback_script, one_thread):
    from torchao.quantization.pt2e import FakeQuantize, HistogramObserver, MovingAverageMinMaxObserver

    def activation_observers(observer_type):
        model = callback_script.MNISTClassifier()
        callback_script.QuantizationAwareTraining(flow="pt2e", observer_type=observer_type).prepare(model)
        return {type(m.activation_post_process) for m in model.model.modules()
                if isinstance(m, FakeQuantize) and m.qscheme == torch.per_tensor_affine}  # activations, not weights

    assert activation_observers("histogram") == {HistogramObserver}
    assert activation_observers("average") == {MovingAverageMinMaxObserver}


# Bad input: one line, exit 2, nothing written or changed.
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Files a careless or hostile user could pass to --load_int8."""
    folder = tmp_path_factory.mktemp("bad_files")
    qat = load_script(QAT)
    float_program = qat.export_program(qat.MNISTConvBNNet().eval())
    torch.export.save(float_program, folder / "float.pt2")
    data = (folder / "float.pt2").read_bytes()
    (folder / "truncated.pt2").write_bytes(data[: len(data) // 2])

    class Other(nn.Module):
        def forward(self, x):
            return x * 2

    torch.export.save(torch.export.export(Other(), (torch.zeros(2, 3),)), folder / "foreign.pt2")
    eager = {"state_dict": {}, "backend": "x86", "hidden_units": 256, "callback": {}}
    torch.save(eager, folder / "eager.pt")
    torch.save({**eager, "backend": "bogus"}, folder / "bogus_backend.pt")
    torch.save({**eager, "hidden_units": -3}, folder / "negative_hidden_units.pt")
    torch.save({**eager, "hidden_units": "256"}, folder / "str_hidden_units.pt")
    torch.save({**eager, "callback": {"observer_type": "max"}}, folder / "bad_callback.pt")
    return folder


CASES = [
    # (scripts, argv, phrases the error line names)
    ((QAT, CALLBACK), ["--flow", "bogus"], ["--flow", "invalid choice"]),
    ((QAT,), ["--freeze_epoch", "0"], ["--freeze_epoch", "at least 1"]),
    ((QAT, CALLBACK), ["--val_size", "3000"], ["--val_size 3000", "no training images"]),
    ((QAT, CALLBACK), ["--limit_train_batches", "0"], ["--limit_train_batches", "at least 1"]),
    ((QAT, CALLBACK), ["--limit_val_batches", "0"], ["--limit_val_batches", "at least 1"]),
    ((QAT, CALLBACK), ["--limit_test_batches", "0.0"], ["--limit_test_batches", "above 0 and at most 1"]),
    ((QAT, CALLBACK), ["--qat_lr", "nan"], ["--qat_lr"]),
    ((QAT, CALLBACK), ["--ckpt", "{files}/missing.ckpt"], ["--ckpt", "no such file"]),
    ((QAT, CALLBACK), ["--flow", "pt2e", "--load_int8", "{files}/eager.pt"], ["saved by --flow eager"]),
    ((QAT, CALLBACK), ["--flow", "eager", "--load_int8", "{files}/float.pt2"], ["saved by --flow pt2e"]),
    ((QAT, CALLBACK), ["--load_int8", "{files}/truncated.pt2"], ["truncated.pt2"]),
    ((QAT, CALLBACK), ["--load_int8", "{files}/foreign.pt2"], ["no single mnist_int8/state.pt"]),
    ((QAT, CALLBACK), ["--load_int8", "{files}/float.pt2"], ["no single mnist_int8/state.pt"]),
    ((QAT, CALLBACK), ["--load_int8", "{files}/bogus_backend.pt"], ["'bogus'"]),
    ((QAT, CALLBACK), ["--load_int8", "{files}/negative_hidden_units.pt"], ["hidden_units -3"]),
    ((QAT, CALLBACK), ["--load_int8", "{files}/str_hidden_units.pt"], ["hidden_units '256'"]),
    ((CALLBACK,), ["--load_int8", "{files}/bad_callback.pt"], ["callback settings", "observer_type"]),
    ((CALLBACK,), ["--observer_type", "max"], ["--observer_type", "invalid choice"]),
    ((QAT, CALLBACK), ["--qat_epochs", "0"], ["--qat_epochs", "at least 1"]),
    ((QAT, CALLBACK), ["--epochs", "-1"], ["--epochs", "at least 1"]),
    ((QAT, CALLBACK), ["--seed", "-1"], ["--seed"]),
    ((QAT, CALLBACK), ["--test-batch-size", "0"], ["--test-batch-size", "at least 1"]),
    ((QAT, CALLBACK), ["--log-interval", "0"], ["--log-interval", "at least 1"]),
    ((QAT, CALLBACK), ["--gamma", "fast"], ["--gamma"]),
    ((QAT, CALLBACK), ["--threads", "0"], ["--threads"]),
    ((QAT, CALLBACK), ["--latency_repeats", "-1"], ["--latency_repeats"]),
    ((QAT, CALLBACK), ["--fast_dev_run", "-1"], ["--fast_dev_run"]),
    ((QAT, CALLBACK), ["--devices", "0", "--val_size", "500"], ["Trainer", "devices"]),
    ((QAT, CALLBACK), ["--accelerator", "tpu", "--val_size", "500"], ["Trainer"]),
    ((QAT, CALLBACK), ["--precision", "bogus", "--val_size", "500"], ["--precision bogus"]),
    ((QAT, CALLBACK), ["--output_dir", "{files}/eager.pt"], ["--output_dir", "not a folder"]),
    ((QAT, CALLBACK), ["--load_model", "{files}/missing.pt"], ["--load_model", "no such file"]),
    # Each valid alone, but not with the data or with QAT: refused before Lightning or torch fail.
    ((QAT, CALLBACK), ["--precision", "16-mixed", "--val_size", "500"], ["--precision 16-mixed", "float32"]),
    ((QAT, CALLBACK), ["--qat_lr", "1e308", "--val_size", "500"], ["--qat_lr 1e+308", "too large"]),
    ((QAT, CALLBACK), ["--batch_size", "100000000", "--val_size", "500"], ["a batch of 100000000"]),
    ((QAT, CALLBACK), ["--limit_test_batches", "1e-9", "--val_size", "500"], ["--limit_test_batches 1e-09"]),
    ((QAT, CALLBACK), ["--limit_train_batches", "0.000001", "--val_size", "500"], ["less than one batch"]),
]


@pytest.mark.parametrize("script, argv, phrases",
                         [(script, argv, phrases) for scripts, argv, phrases in CASES for script in scripts])
def test_bad_input_is_one_clean_line_and_changes_nothing(script, argv, phrases, mnist_dir, bad_files, tmp_path,
                                                          capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "earlier_run"
    out.mkdir()
    (out / "quant_results.csv").write_text("method,int8_acc\nQAT PT2E,0.99\n")
    (out / "mnist_int8.pt2").write_bytes(b"an earlier run's model")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    argv = [arg.format(files=bad_files) for arg in argv]
    result = exit_of(load_script(script).main, ["--data_dir", mnist_dir, "--output_dir", out, *argv], capsys)
    assert_clean_error(result, *phrases)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["earlier_run"]


@pytest.mark.parametrize("script", [QAT, CALLBACK])
def test_original_tutorial_flags_are_accepted(script, bad_files, capsys):
    module = load_script(script)
    args = module.parse_args(["--no-cuda", "--test", "--gamma", "0.7", "--log-interval", "10",
                              "--test-batch-size", "1000", "--save_model", "--load_model", str(bad_files / "eager.pt")])
    notes = capsys.readouterr().err
    assert args.accelerator == "cpu" and args.eval_batch_size == 1000
    assert args.ckpt == str(bad_files / "eager.pt")  # --load_model: the float weights QAT starts from
    for flag in ("--no-cuda", "--test", "--gamma", "--log-interval", "--save_model"):
        assert f"note: {flag} (from the original tutorial)" in notes, flag
    assert module.parse_args(["--load_int8", str(bad_files / "float.pt2")]).flow == "pt2e"  # read from the file
    assert module.parse_args([]).flow == "eager"
    assert module.main(["--named_modules", "--named_parameters"]) == 0
    structure = capsys.readouterr().out
    assert "MNISTConvBNNet" in structure and "model.features.0.weight" in structure


@pytest.mark.parametrize("script", [QAT, CALLBACK])
def test_a_missing_flow_library_is_one_line_that_says_what_to_do(script, monkeypatch, capsys):
    module = load_script(script)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else find_spec(name, *a))
    assert_clean_error(exit_of(module.parse_args, ["--flow", "pt2e"], capsys), "pip install torchao")
    monkeypatch.setattr(module, "tq", None)  # a torch without torch.ao.quantization
    assert_clean_error(exit_of(module.parse_args, [], capsys), "torch.ao.quantization", "--flow pt2e")


@pytest.mark.slow
@pytest.mark.parametrize("script", [QAT, CALLBACK])
def test_sigterm_during_qat_exits_143_and_overwrites_nothing(script, mnist_dir, tmp_path):
    """A scheduler's stop mid-QAT: not a success, and no int8 model from a half-trained one."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mnist_int8.pt").write_bytes(b"an earlier run's model")
    torch.save(load_script(QAT).MNISTConvBNNet().state_dict(), tmp_path / "fp32.pt")
    result = interrupt(tmp_path, script, "--data_dir", mnist_dir, "--output_dir", out, "--ckpt", tmp_path / "fp32.pt",
                       "--qat_epochs", "50", "--batch_size", "64", "--val_size", "500",
                       when=r"Epoch 0: +\d+%.*[1-9]/")  # into the first QAT epoch
    output = result.out
    assert result.returncode == 143, output[-2000:]
    assert "interrupted by SIGTERM" in output and "Traceback" not in output
    assert "fp32 accuracy" not in output
    assert (out / "mnist_int8.pt").read_bytes() == b"an earlier run's model"
    assert not list(out.glob("*.pt2")) and not list(out.rglob(".*partial"))


if __name__ == "__main__":  # run_without_eager_quantization: python this_file.py SCRIPT ARGS...
    remove_eager_quantization()
    script = load_script(sys.argv[1])
    sys.exit(script.main(sys.argv[2:]))
