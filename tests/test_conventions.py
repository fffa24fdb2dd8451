"""What every top-level script shares: the header, the section order, and the common flags."""
import argparse
import ast
import re
import sys

import pytest

import check_copies
from check_copies import SCRIPTS, copies, top_level_blocks
from conftest import ROOT, load_script

# Scripts whose flags LightningCLI makes from type hints (model.*, data.*, trainer.*): no argparse
# flags to compare here; tests/test_cli.py checks them, and parsed_flags parses them all the same.
CLI_SCRIPTS = ["cli_lightning.py"]
ARGPARSE_SCRIPTS = [script for script in SCRIPTS if script not in CLI_SCRIPTS]
SECTIONS = ["Imports", "Model", "LightningModule", "Main", "Flags", "Helpers"]  # others may sit before Main
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
    """Raised by the spy below with the namespace argparse produced, and the parser."""

    def __init__(self, namespace, parser):
        self.namespace, self.parser = namespace, parser


def parsed_flags(script: str, argv: list, monkeypatch) -> argparse.Namespace:
    """The namespace a script's own parser makes of argv, before any of the script's own checks
    (which may look for files on disk); a flag argparse rejects exits with code 2."""
    if script in CLI_SCRIPTS:
        return parsed_cli(script, argv, monkeypatch)
    module = load_script(script)
    original = argparse.ArgumentParser.parse_args

    def spy(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace), self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    with pytest.raises(Parsed) as caught:
        # The scripts have parse_args(); a benchmark may parse first thing in main().
        (getattr(module, "parse_args", None) or module.main)(argv)
    return caught.value.namespace


def parsed_cli(script: str, argv: list, monkeypatch):
    """The config LightningCLI parses from argv (jsonargparse's Namespace), before the script's own
    checks; None when parsing ends the run by itself (--help, --print_config)."""
    from pytorch_lightning.cli import LightningCLI

    module = load_script(script)
    original = LightningCLI.parse_arguments

    def spy(self, parser, args):
        original(self, parser, args)
        raise Parsed(self.config, parser)

    monkeypatch.setattr(LightningCLI, "parse_arguments", spy)
    try:
        module.main(argv)
    except Parsed as parsed:
        return parsed.namespace
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
        return None
    raise AssertionError(f"{script} {argv}: LightningCLI never parsed")


def parser_of(script: str, monkeypatch) -> argparse.ArgumentParser:
    module = load_script(script)
    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                        lambda self, args=None, namespace=None: (_ for _ in ()).throw(Parsed(None, self)))
    with pytest.raises(Parsed) as caught:
        (getattr(module, "parse_args", None) or module.main)([])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
    return caught.value.parser


def header_of(script: str) -> list:
    """The lines of the script's first cell, a markdown cell (what a notebook shows first), uncommented."""
    source = (ROOT / script).read_text()
    assert source.startswith("# %% [markdown]\n"), f"{script} does not open with a markdown cell"
    cell = source.split("\n\n", 1)[0].splitlines()[1:]
    assert all(line == "#" or line.startswith("# ") for line in cell), script
    return [line[2:] for line in cell]


@pytest.mark.parametrize("script", SCRIPTS)
def test_header_cell_has_the_fixed_fields(script, monkeypatch):
    lines = header_of(script)
    assert lines[0].startswith("# ") and len(lines[0]) > len("# ") + 3  # the title
    description = lines[1]
    assert len(description) < 100 and description.endswith("."), description
    if script in ARGPARSE_SCRIPTS:  # LightningCLI builds its help from the classes' signatures
        assert parser_of(script, monkeypatch).description == description, "--help shows the header's description"
    header = "\n".join(lines)
    for paragraph in ("What it teaches", "How to run", "What it writes"):
        assert re.search(rf"^## {paragraph}", header, re.M), f"{script}: no '## {paragraph}' paragraph"
    assert f"python {script}" in header, "How to run shows no command for the script itself"
    assert header.count("```") % 2 == 0, f"{script}: a code fence in the header is not closed"


@pytest.mark.parametrize("script", SCRIPTS)
def test_sections_come_in_the_same_order(script):
    """The named cells, each lesson section under a markdown cell that names it; a parameters cell
    before the imports; and a last cell that runs main() from a shell or a notebook."""
    source = (ROOT / script).read_text()
    found = [name for name in re.findall(r"^# %% (.+)$", source, re.M) if name in SECTIONS]
    assert found == SECTIONS, f"{script}: sections {found}"
    lesson = source[:source.index("\n# %% Main\n")]
    for name in re.findall(r"^# %% ([^\[\n]+)$", lesson, re.M):
        if name not in ("Imports", 'Parameters tags=["parameters"]'):
            assert f"# %% [markdown]\n# ## {name}\n" in source, f"{script}: no markdown cell opens '{name}'"
    assert source.count('\n# %% Parameters tags=["parameters"]\n') == 1
    assert source.index('# %% Parameters tags=["parameters"]') < source.index("# %% Imports")
    assert source.endswith(
        'if __name__ == "__main__":\n'
        '    if IN_NOTEBOOK:  # the flags of the parameters cell; bad input prints its one line, the kernel lives on\n'
        '        with contextlib.suppress(SystemExit):\n'
        '            main(ARGS)\n'
        '    else:\n'
        '        sys.exit(main())\n')


@pytest.mark.parametrize("script", ARGPARSE_SCRIPTS)
def test_common_flags_mean_the_same_in_both_spellings(script, monkeypatch):
    """Every script has the data, output and hardware flags; any other common flag it has means
    this, in both spellings (test_a_flag_means_the_same_in_every_script compares the rest)."""
    monkeypatch.delenv("PATH_DATASETS", raising=False)
    defaults = parsed_flags(script, [], monkeypatch)
    assert {"data_dir", "output_dir", "accelerator", "devices"} <= set(vars(defaults)), script
    checked = 0
    for flag, (value, attribute, default) in COMMON_FLAGS.items():
        if not hasattr(defaults, attribute):
            continue
        checked += 1
        if default is not None:
            assert getattr(defaults, attribute) == default, f"{script} {flag} default"
        underscore = parsed_flags(script, [flag, value], monkeypatch)
        dash = parsed_flags(script, [flag.replace("_", "-"), value], monkeypatch)
        assert getattr(underscore, attribute) == getattr(dash, attribute), f"{script} {flag}"
        assert str(getattr(underscore, attribute)) == value, f"{script} {flag}"
    assert checked >= 8
    assert defaults.output_dir == f"outputs/{script.removesuffix('.py')}"
    assert getattr(defaults, "epochs", 1) >= 1 and getattr(defaults, "lr", 1) > 0


@pytest.mark.parametrize("script", ARGPARSE_SCRIPTS)
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


# Copies that cannot drift: a block marked "# Copied from X.py" must read exactly as in X.py.
@pytest.mark.parametrize("script, name, origin", copies())
def test_marked_copies_match_their_source(script, name, origin):
    assert origin in SCRIPTS and origin != script, f"{script}: {name} is copied from {origin}"
    source_blocks = top_level_blocks(origin)
    assert name in source_blocks, f"{origin} has no {name} for {script} to copy"
    *_, text, origin_marker = source_blocks[name]
    assert origin_marker is None, f"{script}: copy {name} from {origin_marker}, its source, not from a copy"
    assert top_level_blocks(script)[name][2] == text, (
        f"{script}: {name} differs from {origin}; change the source, then run python tests/check_copies.py --fix")


def test_copies_exist():
    """The check above is not vacuous: every script copies its shared helpers."""
    found = copies()
    for script in SCRIPTS[1:]:
        names = {name for copy_script, name, _ in found if copy_script == script}
        shared = {"die", "prepare_mnist", "mnist_tensors"} | ({"number"} if script in ARGPARSE_SCRIPTS else set())
        assert shared <= names, f"{script}: {sorted(names)}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_name_shared_with_another_script_is_a_marked_copy(script):
    """Same name in two scripts and no marker on either: the drift this convention exists to stop.
    A block that differs on purpose gets a name of its own, or is listed in LOCAL_ON_PURPOSE."""
    mine = top_level_blocks(script)
    for other in SCRIPTS:
        theirs = top_level_blocks(other) if other != script else {}
        for name in mine.keys() & theirs.keys() - LOCAL_ON_PURPOSE:
            assert mine[name][3] or theirs[name][3], f"{script} and {other} both define {name}, neither marked as a copy"


# Top-level names every script defines for itself, with its own content: main, its flags, its recipe.
LOCAL_ON_PURPOSE = {"ARGS", "main", "parse_args", "MNISTClassifier", "MODEL_FILE", "load_weights", "report_test"}


@pytest.mark.parametrize("script", ARGPARSE_SCRIPTS)
def test_every_flag_is_read(script, monkeypatch):
    """A script has only the flags it uses: each parsed attribute is read somewhere in the script."""
    monkeypatch.delenv("PATH_DATASETS", raising=False)
    namespace = parsed_flags(script, [], monkeypatch)
    source = (ROOT / script).read_text()
    body = "\n".join(line for line in source.splitlines() if "add_argument(" not in line)
    for attribute in vars(namespace):
        assert re.search(rf"\bargs\.{attribute}\b|[\"']{attribute}[\"']", body), (
            f"{script}: --{attribute} is parsed but never read")


def flag_table(script: str, monkeypatch) -> dict:
    """option string -> what it means: where it goes, how its value is read, what values it takes."""
    table = {}
    for action in parser_of(script, monkeypatch)._actions:
        kind = (getattr(action.type, "__name__", None), getattr(action.type, "allowed", None))
        # A 1.x flag that takes a value passes it to the script's own successor, or to none, as its note says
        # (--log-interval: loggers' --log_every_n_steps); one that stores a constant (--no-cuda) must agree everywhere.
        own_successor = type(action).__name__ == "OriginalTutorialFlag" and action.const is None
        dest = "(the script's successor, or none)" if own_successor else action.dest
        meaning = (dest, kind, tuple(action.choices or ()), action.nargs, action.const, type(action).__name__)
        for option in action.option_strings:
            table[option] = (meaning, action.default)
    return table


def test_a_flag_means_the_same_in_every_script(monkeypatch):
    monkeypatch.delenv("PATH_DATASETS", raising=False)
    tables = {script: flag_table(script, monkeypatch) for script in ARGPARSE_SCRIPTS}
    own_defaults = {"--output_dir", "--output-dir", "--epochs", "--lr", "--help", "-h"}
    shared = 0
    for option in {option for table in tables.values() for option in table}:
        having = {script: table[option] for script, table in tables.items() if option in table}
        if len(having) < 2:
            continue
        shared += 1
        meanings = {meaning for meaning, _ in having.values()}
        assert len(meanings) == 1, f"{option} means different things: {having}"
        if option not in own_defaults:
            assert len({repr(default) for _, default in having.values()}) == 1, f"{option} defaults differ: {having}"
    assert shared > 20


# Plumbing: flags, file checks, atomic writes, interrupts, reporting. Any top-level block of these
# names, and any parser, flag type or sys.exit, belongs below "# %% Main"; above it is the lesson.
PLUMBING = {
    "parse_args", "number", "batch_count", "existing_file", "output_folder", "DefaultsHelpFormatter",
    "OriginalTutorialFlag", "top_k", "callback_names", "logger_names", "check_flow_is_installed",
    "MNIST_FILES", "prepare_mnist", "idx_length", "check_multi_node", "check_flags_fit_the_data", "check_compile",
    "exit_on_error", "exit_if_interrupted", "exit_if_write_fails", "AtomicCheckpointIO", "save_atomically",
    "write_atomically", "write_failure", "WRITE_ERRNOS", "file_times", "print_outputs", "save_program",
    "saved_flow", "read_int8_file", "INT8_STATE", "MAX_INT8_BYTES", "check_resumable", "check_checkpoint_folder",
    "load_checkpoint_file", "epoch_history", "plot_history", "print_structure", "report_test",
    "RESULTS_FILE", "RESULT_COLUMNS", "append_result", "first_line", "die",
    "exit_if_log_write_fails", "check_flags_fit_the_test_set",  # check_point_load.py's own
    "check_run_fits_the_data",  # check_point_save.py's own
}
PLUMBING_CALLS = {"argparse.ArgumentParser", "argparse.ArgumentTypeError", "argparse.Action", "sys.exit"}
# Each script's length cap: its length after issue 17's work. Lower a cap when a script
# shrinks; raising one needs a reason (find lines to remove first).
MAX_LINES = {
    "Basic_usage_of_lightning.py": 705, "check_point_save.py": 768, "check_point_load.py": 609,
    "quant_lightning_ptq.py": 963, "quant_lightning_qat.py": 1090, "quant_with_only_lightning.py": 1205,
    "callbacks_lightning.py": 929, "loggers_lightning.py": 813, "cli_lightning.py": 415,
}


def main_line(script: str) -> int:
    return (ROOT / script).read_text().splitlines().index("# %% Main") + 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_plumbing_above_main(script):
    main = main_line(script)
    above = {name for name, (first, *_) in top_level_blocks(script).items() if first < main}
    misplaced = sorted(above & PLUMBING)
    assert not misplaced, f"{script}: plumbing above '# %% Main': {misplaced}; move it below main"
    for node in ast.walk(ast.parse((ROOT / script).read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.lineno < main:
            used = f"{node.value.id}.{node.attr}"
            assert used not in PLUMBING_CALLS, f"{script}:{node.lineno}: {used} above '# %% Main'"


@pytest.mark.parametrize("inserted, complaint", [
    (["def save_program(program, path):", "    pass"], "plumbing above"),
    (["QUIT = sys.exit"], "sys.exit above"),
])
def test_the_plumbing_check_can_fail(inserted, complaint, tmp_path, monkeypatch):
    """The check above sees plumbing put above Main."""
    lines = (ROOT / "Basic_usage_of_lightning.py").read_text().splitlines()
    main = lines.index("# %% Main")
    lines[main:main] = [*inserted, "", ""]
    (tmp_path / "Basic_usage_of_lightning.py").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(check_copies, "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=complaint):
        test_no_plumbing_above_main("Basic_usage_of_lightning.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_do_not_grow(script):
    length = len((ROOT / script).read_text().splitlines())
    assert length <= MAX_LINES[script], (
        f"{script} has {length} lines, more than its cap of {MAX_LINES[script]}: find lines to remove")


@pytest.mark.parametrize("script", ARGPARSE_SCRIPTS)
def test_help_explains_every_flag_and_shows_one_default(script, monkeypatch):
    parser = parser_of(script, monkeypatch)
    for action in parser._actions:
        assert action.help, f"{script}: {action.option_strings[0]} has no help text"
    text = " ".join(parser.format_help().split())  # unwrapped
    assert "(default: None)" not in text and "(default: False)" not in text, script
    assert not re.search(r"\(default: [^)]*\) \(default:", text), f"{script}: a flag shows two defaults"
    assert "(default: 128)" in text  # the defaults that exist are still shown
