"""Shared fixtures: a small learnable MNIST written in IDX format, and a way to run the scripts.

The synthetic set goes through torchvision's real MNIST reader (the four raw IDX files in
MNIST/raw), so the scripts are tested exactly as they run on the real data, offline and fast.
"""
import importlib.util
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 3000, 500
# Flags that make any script train briefly on the synthetic set: 2500 train / 500 validation.
QUICK = ("--epochs", "1", "--batch_size", "64", "--val_size", "500")


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: 0x0000, a type byte (0x08 = uint8), the number of dimensions, big-endian sizes, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_digits(count: int, rng: np.random.Generator, templates: np.ndarray):
    """Each class is a fixed blocky 28x28 pattern, shifted by up to 3 pixels, over a faint
    pattern of another class and heavy noise: learnable, but not perfectly in one epoch."""
    labels = rng.integers(0, 10, size=count)
    distractors = rng.integers(0, 10, size=count)
    images = templates[labels] * 1.0 + templates[distractors] * 0.6
    for i, (dy, dx) in enumerate(rng.integers(-3, 4, size=(count, 2))):
        images[i] = np.roll(images[i], (dy, dx), axis=(0, 1))
    images = images * 120 + rng.normal(0, 90, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """A data root holding MNIST/raw with 3000 training and 500 test images of 10 learnable classes."""
    root = tmp_path_factory.mktemp("synthetic_mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    coarse = rng.random((10, 7, 7)) > 0.6
    templates = coarse.repeat(4, axis=1).repeat(4, axis=2)
    for split, count in (("train", SYNTHETIC_TRAIN), ("test", SYNTHETIC_TEST)):
        images, labels = synthetic_digits(count, rng, templates)
        write_idx(raw / RAW_FILES[split][0], images)
        write_idx(raw / RAW_FILES[split][1], labels)
    return root


def script_env(**extra) -> dict:
    """The environment scripts run in: offline for sure, one thread each (pytest runs two at once)."""
    env = {k: v for k, v in os.environ.items() if k != "PATH_DATASETS"}
    # An unroutable proxy: any download attempt fails at once instead of reaching the internet.
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::DeprecationWarning", MPLBACKEND="Agg")
    env.update(extra)
    return env


def run_in(cwd: Path, script: str, *args, timeout: int = 600, env: dict = None, check: bool = False):
    """Run a script (a file name under the repository root, or e.g. benchmarks/parity.py) in a
    fresh process in folder cwd (its outputs/ go there).

    Returns the CompletedProcess; `.out` is stdout and stderr together. check=True asserts exit
    code 0, showing the end of the output otherwise. Module-scoped fixtures that train once for
    several tests call this directly.
    """
    command = [sys.executable, str(ROOT / script), *map(str, args)]
    result = subprocess.run(command, cwd=cwd, env=env or script_env(), capture_output=True,
                            text=True, timeout=timeout)
    result.out = result.stdout + result.stderr
    if check:
        assert result.returncode == 0, result.out[-3000:]
    return result


def interrupt(cwd: Path, script: str, *args, when, signal_number=signal.SIGTERM, seconds: float = 300):
    """Start a script, send it signal_number once when() is true (or, when `when` is a pattern, once
    its output matches), and return its exit code and its whole output as .returncode and .out."""
    process = subprocess.Popen([sys.executable, "-u", str(ROOT / script), *map(str, args)], cwd=cwd, env=script_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, deadline = b"", time.monotonic() + seconds
    ready = when if callable(when) else lambda: re.search(when, output.decode(errors="replace"))
    try:
        while process.poll() is None and not ready() and time.monotonic() < deadline:
            if select.select([process.stdout], [], [], 0.05)[0]:  # keep reading: a full pipe would stall it
                output += os.read(process.stdout.fileno(), 65536)
        assert process.poll() is None and ready(), f"ended or timed out before {when}:\n{output.decode()[-3000:]}"
        process.send_signal(signal_number)
        output += process.communicate(timeout=120)[0]
    finally:
        process.kill()
    return SimpleNamespace(returncode=process.returncode, out=output.decode(errors="replace"))


@pytest.fixture
def run_script(tmp_path):
    """run_in(tmp_path, ...): each test gets its own working folder."""
    def run(script: str, *args, **kwargs):
        return run_in(tmp_path, script, *args, **kwargs)
    return run


def load_script(path) -> object:
    """Import a script (a path, or a file name under the repository root) as a module, once, to
    use its functions and classes in-process; the scripts run nothing on import. Its folder goes
    on sys.path, as when it runs as a script: the benchmarks import benchmarks/common.py."""
    path = ROOT / path
    if path not in _loaded:
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[path] = module
    return _loaded[path]


_loaded = {}


def printed_accuracy(output: str, label: str = "test accuracy") -> float:
    """The value a script printed as 'label: 0.9876'."""
    match = re.search(rf"{label}:\s*([0-9.]+)", output)
    assert match, f"no '{label}' line in output:\n{output[-3000:]}"
    return float(match.group(1))


def program_kb(path) -> float:
    """A .pt2's size without the member mnist_int8/state.pt: the program that deploys."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        state = next(info for info in archive.infolist() if info.filename.endswith("/mnist_int8/state.pt"))
    return (path.stat().st_size - state.compress_size) / 1024


def exit_of(function, argv, capsys) -> SimpleNamespace:
    """Call function(argv) in-process (a script's main or parse_args), which must exit through
    SystemExit: returns what assert_clean_error expects of a finished process."""
    with pytest.raises(SystemExit) as exit_info:
        function([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=exit_info.value.code, stderr=captured.err, out=captured.out + captured.err)


def assert_clean_error(result, *phrases: str) -> None:
    """Bad input: exit code 2 (every script's die() and argparse use it), no traceback, and one
    error line that names the problem."""
    assert phrases, "say what the error line must name"
    assert result.returncode == 2, result.out[-2000:]
    assert "Traceback" not in result.out, result.out[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr[-2000:]
    for phrase in phrases:
        assert phrase.lower() in error_lines[0].lower(), error_lines[0]


def broken_data(mnist_dir: Path, folder: Path, damage: str) -> Path:
    """A copy of the synthetic MNIST in folder with one raw file damaged: "labels" (one label
    short), "truncated" (a cut image file) or "empty" (no MNIST at all, and offline)."""
    folder.mkdir()
    if damage == "empty":
        return folder
    shutil.copytree(mnist_dir / "MNIST", folder / "MNIST")
    raw = folder / "MNIST" / "raw"
    if damage == "labels":
        labels = raw / "train-labels-idx1-ubyte"
        write_idx(labels, np.frombuffer(labels.read_bytes()[8:], dtype=np.uint8)[:-1])
    else:
        images = raw / "t10k-images-idx3-ubyte"
        images.write_bytes(images.read_bytes()[:-100])
    return folder


@pytest.fixture
def one_thread():
    """In-process fits share the machine with the other pytest worker."""
    import torch  # here, not at the top: most test files need no torch in the pytest process

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_torch_determinism():
    """A Trainer(deterministic=True) built in this process turns torch's deterministic mode on for
    good; int8 kernels have no deterministic version, so a later in-process test would fail."""
    import torch

    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
