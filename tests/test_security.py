"""Hostile files: nothing a script is given runs code, or writes or deletes outside its output folder.

.pt2: --load_int8 reads one member of the archive, mnist_int8/state.pt, with zipfile and
torch.load(weights_only=True), and rebuilds the int8 model with the script's own code; torch.export.load
is never called. The corpus below is built from a real mnist_int8.pt2 that quant_lightning_ptq.py's
save_int8 writes (once per module, in-process, from an untrained network: seconds). Each payload would
create a marker file; no marker may exist afterwards. The payloads in the program's own members are
live: torch.export.load of the same archive runs them.

Checkpoints: check_point_save.py --resume refuses a last.ckpt whose callback states name files outside
its checkpoint folder (or are malformed) before Lightning can act on them; every outside file stays
byte-identical.
"""
import contextlib
import io
import json
import shutil
import zipfile

import pytest
import torch

from conftest import assert_clean_error, exit_of, load_script, run_in

PTQ, QAT, CALLBACK = "quant_lightning_ptq.py", "quant_lightning_qat.py", "quant_with_only_lightning.py"
STATE = "mnist_int8/state.pt"


class CreatesFile:
    """A pickle payload: unpickling it creates a file, as an attacker's would run anything."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').close()",)


def pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """A mnist_int8.pt2 as --flow pt2e writes it, and the int8 graph it was written from."""
    pytest.importorskip("torchao.quantization.pt2e")
    ptq = load_script(PTQ)
    torch.manual_seed(0)
    float_net = ptq.MNISTConvBNNet().eval()
    int8_net, calibrated_state = ptq.quantize_pt2e(float_net, [torch.randn(8, 1, 28, 28)])
    out = tmp_path_factory.mktemp("genuine")
    ptq.save_int8(int8_net, float_net, "pt2e", "x86", out, calibrated_state)
    return out / "mnist_int8.pt2", int8_net


def rewritten(program, target, replace: dict, drop=(), raw: list = ()):
    """A copy of a .pt2 archive: members replaced or added ({name under the top folder: bytes}), some
    dropped, and raw (full name, bytes) members appended as they are, compressed."""
    replace = dict(replace)
    with zipfile.ZipFile(program) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as copy:
        top = source.namelist()[0].split("/")[0]
        for info in source.infolist():
            name = info.filename.split("/", 1)[1]
            if name not in drop:
                copy.writestr(info, replace.pop(name, None) or source.read(info))
        for name, data in replace.items():
            copy.writestr(f"{top}/{name}", data)
        for name, data in raw:
            copy.writestr(name, data)
    return target


def member(program, name) -> bytes:
    with zipfile.ZipFile(program) as archive:
        return archive.read(next(n for n in archive.namelist() if n.split("/", 1)[1] == name))


def model_json(program, edit) -> dict:
    text = member(program, "models/model.json").decode()
    edited = edit(text)
    assert edited != text, "the payload did not go in"
    return {"models/model.json": edited.encode()}


# Payloads in the program's own members: torch.export.load would run them; --load_int8 never reads them.
def guards_code(program, marker):
    return model_json(program, lambda text: text.replace(
        '"guards_code": []', json.dumps({"guards_code": [f"open({str(marker)!r}, 'w').close() is None"]})[1:-1]))


def use_pickle_behind_a_double_slash(program, marker):
    config = json.loads(member(program, "data/weights/model_weights_config.json"))
    entry = next(iter(config["config"].values()))
    entry.update(use_pickle=True, path_name="/evil.json")
    return {"data/weights/model_weights_config.json": json.dumps(config).encode(),
            "/evil.json": pickled(CreatesFile(marker))}  # torch reads archive//evil.json


def pickled_weight(program, marker):
    config = json.loads(member(program, "data/weights/model_weights_config.json"))
    next(e for e in config["config"].values() if e["path_name"] == "weight_0")["use_pickle"] = True
    return {"data/weights/model_weights_config.json": json.dumps(config).encode(),
            "data/weights/weight_0": pickled(CreatesFile(marker))}


def pickled_sample_inputs(program, marker):
    return {"data/sample_inputs/model.pt": pickled(CreatesFile(marker))}


def pickled_constant(program, marker):
    config = {"config": {"evil": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True}}}
    return {"data/constants/model_constants_config.json": json.dumps(config).encode(),
            "data/constants/custom_obj_0": pickled(CreatesFile(marker))}


def sympy_range_constraint(program, marker):
    call = f"__import__('builtins').exec(\\\"open({str(marker)!r}, 'w').close()\\\")"
    return model_json(program, lambda text: text.replace('"s77"', f'"s77 + {call}"'))


def node_target_naming_a_callable(program, marker):
    return model_json(program, lambda text: text.replace(
        '"target": "torch.ops.aten.', '"target": "builtins.exec', 1))


def native_code(program, marker):
    return {"data/aotinductor/model/model.so": b"\x7fELF" + pickled(CreatesFile(marker))}


PROGRAM_PAYLOADS = [guards_code, use_pickle_behind_a_double_slash, pickled_weight, pickled_sample_inputs,
                    pickled_constant, sympy_range_constraint, node_target_naming_a_callable, native_code]
LIVE = {guards_code, use_pickle_behind_a_double_slash, pickled_weight, pickled_sample_inputs}


def forbid_program_loads(monkeypatch):
    """torch.export.load and torch.load without weights_only fail the test if a script calls them."""
    def export_load(*args, **kwargs):
        raise AssertionError("torch.export.load was called")
    real_load = torch.load

    def load(*args, weights_only=None, **kwargs):
        assert weights_only is True, "torch.load without weights_only=True"
        return real_load(*args, weights_only=True, **kwargs)
    monkeypatch.setattr(torch.export, "load", export_load)
    monkeypatch.setattr(torch, "load", load)


@pytest.mark.parametrize("payload", PROGRAM_PAYLOADS, ids=lambda f: f.__name__)
def test_program_payloads_are_never_loaded(payload, genuine, tmp_path, monkeypatch):
    program, int8_net = genuine
    marker = tmp_path / "payload_ran"
    evil = rewritten(program, tmp_path / "evil.pt2", payload(program, marker))
    with monkeypatch.context() as patch:
        forbid_program_loads(patch)
        states = [load_script(script).read_int8_file(str(evil), "pt2e") for script in (PTQ, QAT, CALLBACK)]
    assert not marker.exists()
    # What they read is the genuine file's tensors, from which the PTQ script rebuilds the same int8 graph.
    ptq = load_script(PTQ)
    genuine_state = ptq.read_int8_file(str(program), "pt2e")["state_dict"]
    for state in states:
        assert state["state_dict"].keys() == genuine_state.keys()
        assert all(torch.equal(state["state_dict"][k], v) for k, v in genuine_state.items())
    images = torch.randn(4, 1, 28, 28)
    rebuilt, _ = ptq.quantize_pt2e(ptq.MNISTConvBNNet(), [], states[0]["state_dict"])
    with torch.no_grad():
        assert torch.equal(rebuilt(images), int8_net(images))
    if payload in LIVE:  # the payload is real: loading the archive as a program runs it
        with contextlib.suppress(Exception):
            torch.export.load(evil).module()(torch.zeros(2, 1, 28, 28))
        assert marker.exists()


# Payloads in the member --load_int8 does read, and names that try to pass for it: refused, exit 2.
def state_payload(program, marker):
    return {"replace": {STATE: pickled(CreatesFile(marker))}}


def state_of_another_shape(program, marker):
    state = torch.load(io.BytesIO(member(program, STATE)), weights_only=True)
    state["state_dict"]["classifier.1.weight"] = torch.zeros(3, 3)
    return {"replace": {STATE: pickled(state)}}


def state_with_a_meta_tensor(program, marker):
    state = torch.load(io.BytesIO(member(program, STATE)), weights_only=True)
    state["state_dict"]["classifier.1.weight"] = torch.empty(256, 1568, device="meta")
    return {"replace": {STATE: pickled(state)}}


def state_not_a_table(program, marker):
    return {"replace": {STATE: pickled({"state_dict": "weights", "hidden_units": 256})}}


def hidden_units_huge(program, marker):
    state = torch.load(io.BytesIO(member(program, STATE)), weights_only=True)
    return {"replace": {STATE: pickled({**state, "hidden_units": 10**9})}}


def doubled_state(program, marker):
    top = zipfile.ZipFile(program).namelist()[0].split("/")[0]
    return {"raw": [(f"{top}/{STATE}", pickled(CreatesFile(marker)))]}


def path_trick(name):
    def trick(program, marker):
        return {"drop": [STATE], "raw": [(name, pickled(CreatesFile(marker)))]}
    trick.__name__ = f"state_named {name}"
    return trick


def zip_bomb(program, marker):
    """A member that unpacks to 64 MiB of zeros from a few KiB (the test lowers the limit to 1 MiB)."""
    return {"drop": [STATE], "raw": [(f"archive/{STATE}", b"\0" * (64 << 20))]}


def inner_zip_bomb(program, marker):
    """The member is small, but the torch.save archive inside it unpacks to 64 MiB."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickled({}))
        archive.writestr("archive/data/0", b"\0" * (64 << 20))
    return {"replace": {STATE: inner.getvalue()}}


STATE_PAYLOADS = [
    (state_payload, "more than tensors and plain values"),
    (state_of_another_shape, "does not hold an int8"),
    (state_with_a_meta_tensor, "does not hold an int8"),
    (state_not_a_table, "no 'state_dict' entry"),
    (hidden_units_huge, "hidden_units 1000000000"),
    (doubled_state, "no single mnist_int8/state.pt"),
    *[(path_trick(name), "no single mnist_int8/state.pt") for name in (
        f"archive//{STATE}", f"archive/./{STATE}", f"archive/x/../{STATE}", f"/archive/{STATE}", f"../{STATE}",
        f"archive\\{STATE.replace('/', chr(92))}", f"archive/{STATE.upper()}", STATE)],
    (zip_bomb, "unpacks to more than 1 MiB"),
    (inner_zip_bomb, "unpacks to more than 1 MiB"),
]


@pytest.mark.parametrize("script", [PTQ, QAT, CALLBACK])
@pytest.mark.parametrize("payload, phrase", STATE_PAYLOADS, ids=[p.__name__ for p, _ in STATE_PAYLOADS])
def test_hostile_state_is_one_error_line(payload, phrase, script, genuine, mnist_dir, tmp_path, capsys,
                                         monkeypatch):
    program, _ = genuine
    if script == CALLBACK and phrase == "does not hold an int8":
        phrase = "no 'callback' entry"  # the PTQ script's file holds no callback settings: refused before
    marker = tmp_path / "payload_ran"
    parts = payload(program, marker)
    with pytest.warns(UserWarning, match="Duplicate name") if payload is doubled_state else contextlib.nullcontext():
        evil = rewritten(program, tmp_path / "evil.pt2", parts.get("replace", {}), parts.get("drop", ()),
                         parts.get("raw", ()))
    loaded = load_script(script)
    if payload in (zip_bomb, inner_zip_bomb):
        monkeypatch.setattr(loaded, "MAX_INT8_BYTES", 1 << 20)
    forbid_program_loads(monkeypatch)
    before = sorted(tmp_path.iterdir())
    result = exit_of(loaded.main, ["--load_int8", evil, "--data_dir", mnist_dir, "--output_dir", tmp_path / "out"], capsys)
    assert_clean_error(result, "evil.pt2", phrase)
    assert not marker.exists()
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_the_real_file_loads_to_the_same_int8_model(genuine):
    """The route is not vacuous: the genuine file passes every check and rebuilds the run's int8 graph."""
    program, int8_net = genuine
    ptq = load_script(PTQ)
    saved = ptq.read_int8_file(str(program), "pt2e")
    rebuilt, _ = ptq.quantize_pt2e(ptq.MNISTConvBNNet(saved["hidden_units"]), [], saved["state_dict"])
    images = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), int8_net(images))
    # and the file is still a program others can deploy
    assert any(t.dtype == torch.int8 for t in torch.export.load(program).state_dict.values())


# check_point_save.py --resume: a crafted last.ckpt. Lightning deletes the files a ModelCheckpoint state
# names as worse top-k or earlier last checkpoints, so paths outside the folder would lose user files.
RUN = ("--epochs", "2", "--batch_size", "64", "--val_size", "500", "--limit_train_batches", "2",
       "--limit_val_batches", "2", "--save_top_k", "1", "--every_n_epochs", "1", "--seed", "2")


@pytest.fixture(scope="module")
def saved_run(mnist_dir, tmp_path_factory):
    """A short check_point_save.py run: its folder holds a genuine last.ckpt to craft from."""
    root = tmp_path_factory.mktemp("checkpoint_run")
    run_in(root, "check_point_save.py", *RUN, "--data_dir", mnist_dir, "--output_dir", root / "run", check=True)
    return root / "run"


def outside_paths(folder, victims):
    """Paths that lead out of folder: relative "..", absolute, and through a symlinked folder."""
    (folder / "link").symlink_to(victims, target_is_directory=True)
    (folder / "epoch=00-valid_loss=0.0001.ckpt").symlink_to(victims / "by_symlink.ckpt")
    return {"dotdot": f"{folder}/../../victims/epoch=00-valid_loss=0.0001.ckpt",
            "absolute": str(victims / "epoch=00-valid_loss=0.0001.ckpt"),
            "symlinked_folder": f"{folder}/link/epoch=00-valid_loss=0.0001.ckpt",
            "symlinked_file": f"{folder}/epoch=00-valid_loss=0.0001.ckpt",
            "not_a_checkpoint_name": f"{folder}/notes.txt"}


def points_outside(checkpoint, path):
    for name, state in checkpoint["callbacks"].items():
        if name.startswith("ModelCheckpoint"):
            state["best_k_models"] = {path: torch.tensor(0.0), **state["best_k_models"]}
            state["kth_best_model_path"] = state["last_model_path"] = path


def malformed(change):
    def craft(checkpoint, path):
        change(checkpoint, checkpoint["callbacks"]["ResumableState"])
    return craft


CHECKPOINT_CASES = {
    **{f"path {kind}": (kind, points_outside, "not a checkpoint of this run") for kind in (
        "dotdot", "absolute", "symlinked_folder", "symlinked_file", "not_a_checkpoint_name")},
    "callbacks state a list": (None, lambda c, p: c.update(callbacks=list(c["callbacks"].items())), "no ResumableState"),
    "settings a string": (None, malformed(lambda c, s: s.update(settings="epochs=2")), "settings"),
    "history not a table": (None, malformed(lambda c, s: s.update(history="epoch,loss")), "history"),
    "rng state not a tensor": (None, malformed(lambda c, s: s.update(torch_rng=[1, 2, 3])), "random-generator"),
    "rng state of the wrong size": (None, malformed(lambda c, s: s.update(torch_rng=torch.zeros(3, dtype=torch.uint8))),
                                    "random-generator"),
    "scheduler state a string": (None, lambda c, p: c.update(lr_schedulers="OneCycleLR"), "LR-scheduler"),
    "no loop state": (None, lambda c, p: c.pop("loops"), "training-loop"),
    "weight of the wrong shape": (None, lambda c, p: c["state_dict"].update({"model.classifier.4.weight": torch.zeros(3)}),
                                  "weights"),
    "meta weight": (None, lambda c, p: c["state_dict"].update(
        {"model.classifier.4.weight": torch.empty(c["state_dict"]["model.classifier.4.weight"].shape, device="meta")}), "weights"),
    "optimizer moment of the wrong shape": (None, lambda c, p: c["optimizer_states"][0]["state"][0].update(
        exp_avg=torch.zeros(7)), "optimizer state"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_crafted_checkpoint_is_refused_and_touches_nothing(case, saved_run, mnist_dir, tmp_path, capsys):
    kind, craft, phrase = CHECKPOINT_CASES[case]
    run, victims = tmp_path / "run", tmp_path / "victims"
    shutil.copytree(saved_run, run)
    victims.mkdir()
    for name in ("epoch=00-valid_loss=0.0001.ckpt", "by_symlink.ckpt", "user_notes.txt"):
        (victims / name).write_text(f"the user's {name}")
    folder = run / "checkpoints"
    paths = outside_paths(folder, victims)
    checkpoint = torch.load(folder / "last.ckpt", weights_only=True)
    here, there = str(folder.resolve()), str((saved_run / "checkpoints").resolve())
    for name, state in checkpoint["callbacks"].items():  # as if written in this folder: Lightning restores all
        if name.startswith("ModelCheckpoint"):
            state.update({key: value.replace(there, here) for key, value in state.items() if isinstance(value, str)})
            state["best_k_models"] = {path.replace(there, here): score for path, score in state["best_k_models"].items()}
    craft(checkpoint, paths.get(kind))
    torch.save(checkpoint, folder / "last.ckpt")
    before = {path: path.read_bytes() for path in [*victims.iterdir(), *folder.iterdir()] if path.is_file()}
    listing = sorted(tmp_path.rglob("*"))
    result = exit_of(load_script("check_point_save.py").main,
                     [*RUN, "--data_dir", mnist_dir, "--output_dir", run, "--resume"], capsys)
    assert_clean_error(result, "last.ckpt", phrase)
    assert sorted(tmp_path.rglob("*")) == listing
    assert all(path.read_bytes() == data for path, data in before.items())


def test_the_genuine_checkpoint_passes_the_resume_checks(saved_run):
    """The checks are not vacuous: the run's own last.ckpt passes them."""
    save = load_script("check_point_save.py")
    args = save.parse_args([*RUN])
    model = save.MNISTClassifier()
    save.check_resumable(saved_run / "checkpoints" / "last.ckpt", {name: getattr(args, name) for name in save.RUN_SETTINGS},
                         saved_run / "checkpoints", model)
