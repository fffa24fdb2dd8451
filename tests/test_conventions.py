"""What every top-level script shares: the header, the section order, and the common flags."""
import argparse
import ast
import re

import pytest

from conftest import ROOT, load_script

SCRIPTS = ["Basic_usage_of_lightning.py", "check_point_save.py", "check_point_load.py",
           "quant_lightning_ptq.py", "quant_lightning_qat.py", "quant_with_only_lightning.py",
           "callbacks_lightning.py", "loggers_lightning.py"]
SECTIONS = ["Imports", "Model", "LightningModule", "Data", "Main", "Flags"]
# flag: (the value to pass, the attribute it sets, the default every script shares or None)
COMMON_FLAGS = {
    "--data_dir": ("somewhere", "data_dir", "data"),
    "--output_dir": ("elsewhere", "output_dir", None),
    "--batch_size": ("7", "batch_size", 128),
    "--epochs": ("2", "epochs", None),
    "--lr": ("0.5", "lr", None),
    "--seed": ("3", "seed", 42),
    "--num_workers": ("1", "num_workers", 0),
    "--val_size": ("100", "val_size", 5000),
    "--accelerator": ("cpu", "accelerator", "auto"),
    "--devices": ("2", "devices", "auto"),
    "--strategy": ("ddp", "strategy", "auto"),
    "--num_nodes": ("2", "num_nodes", 1),
    "--precision": ("bf16-mixed", "precision", "32-true"),
    "--limit_train_batches": ("5", "limit_train_batches", 1.0),
    "--limit_val_batches": ("0.5", "limit_val_batches", 1.0),
    "--limit_test_batches": ("3", "limit_test_batches", 1.0),
}


class Parsed(Exception):
    """Raised by the spy below with the namespace argparse produced."""

    def __init__(self, namespace):
        self.namespace = namespace


def parsed_flags(script: str, argv: list, monkeypatch) -> argparse.Namespace:
    """The namespace a script's own parser makes of argv, before any of the script's own checks
    (which may look for files on disk); a flag argparse rejects exits with code 2."""
    module = load_script(script)
    original = argparse.ArgumentParser.parse_args

    def spy(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    with pytest.raises(Parsed) as caught:
        # The scripts have parse_args(); benchmarks/quantization.py parses first thing in main().
        (getattr(module, "parse_args", None) or module.main)(argv)
    return caught.value.namespace


@pytest.mark.parametrize("script", SCRIPTS)
def test_header_docstring_has_the_fixed_fields(script):
    docstring = ast.get_docstring(ast.parse((ROOT / script).read_text()))
    assert docstring, f"{script} has no header docstring"
    lines = docstring.splitlines()
    assert lines[0].startswith("Title: ") and len(lines[0]) > len("Title: ") + 3
    assert lines[1].startswith("Description: ")
    description = lines[1].removeprefix("Description: ")
    assert len(description) < 100 and description.endswith("."), description
    for paragraph in ("What it teaches", "How to run", "What it writes"):
        assert re.search(rf"^{paragraph}", docstring, re.M), f"{script}: no '{paragraph}' paragraph"
    assert f"python {script}" in docstring, "How to run shows no command for the script itself"


@pytest.mark.parametrize("script", SCRIPTS)
def test_sections_come_in_the_same_order(script):
    source = (ROOT / script).read_text()
    found = [name for name in re.findall(r"^# %% (.+)$", source, re.M) if name in SECTIONS]
    assert found == SECTIONS, f"{script}: sections {found}"
    assert re.search(r'^if __name__ == "__main__":\n    sys.exit\(main\(\)\)', source, re.M)


@pytest.mark.parametrize("script", SCRIPTS)
def test_common_flags_mean_the_same_in_both_spellings(script, monkeypatch):
    monkeypatch.delenv("PATH_DATASETS", raising=False)
    defaults = parsed_flags(script, [], monkeypatch)
    for flag, (value, attribute, default) in COMMON_FLAGS.items():
        if default is not None:
            assert getattr(defaults, attribute) == default, f"{script} {flag} default"
        underscore = parsed_flags(script, [flag, value], monkeypatch)
        dash = parsed_flags(script, [flag.replace("_", "-"), value], monkeypatch)
        assert getattr(underscore, attribute) == getattr(dash, attribute), f"{script} {flag}"
        assert str(getattr(underscore, attribute)) == value, f"{script} {flag}"
    assert defaults.output_dir == f"outputs/{script.removesuffix('.py')}"
    assert defaults.epochs >= 1 and defaults.lr > 0


@pytest.mark.parametrize("script", SCRIPTS)
def test_path_datasets_sets_the_default_data_dir(script, monkeypatch):
    monkeypatch.setenv("PATH_DATASETS", "/datasets")
    assert parsed_flags(script, [], monkeypatch).data_dir == "/datasets"


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_stand_alone(script):
    """No script imports another script of this repository: each one can be copied out alone."""
    tree = ast.parse((ROOT / script).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {name.removesuffix(".py") for name in SCRIPTS}
