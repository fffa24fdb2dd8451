"""The READMEs are part of the tutorial: their code must run and their commands must parse."""
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, script_env
from test_conventions import parsed_flags

READMES = ["README.md", "README.ja.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def code_blocks(readme: str, language: str = None) -> list:
    blocks = FENCE.findall((ROOT / readme).read_text(encoding="utf-8"))
    return [code for lang, code in blocks if language is None or lang == language]


def script_commands(readme: str) -> list:
    """Every `python <script>.py ...` line of the bash blocks, continuation lines joined."""
    commands = []
    for block in code_blocks(readme, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"&&|;|\|", line):
                words = shlex.split(part)
                while words and "=" in words[0]:  # VAR=value before the command
                    words.pop(0)
                if len(words) >= 2 and words[0] == "python" and words[1].endswith(".py"):
                    commands.append(words[1:])
    return commands


def test_both_readmes_hold_the_same_code():
    english, japanese = (code_blocks(readme) for readme in READMES)
    assert len(english) > 10
    assert english == japanese


def test_readmes_link_to_each_other():
    assert "README.ja.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "README.md" in (ROOT / "README.ja.md").read_text(encoding="utf-8")


def test_every_python_block_runs(mnist_dir, tmp_path):
    """All ```python blocks of README.md, in order, in one fresh interpreter on synthetic MNIST."""
    blocks = code_blocks("README.md", "python")
    program = "\n\n".join(f"print('--- block {i}', flush=True)\n{block}" for i, block in enumerate(blocks))
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                            env=script_env(PATH_DATASETS=str(mnist_dir)), timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("--- block") == len(blocks)


@pytest.mark.parametrize("readme", READMES)
def test_every_script_command_names_a_script_and_valid_flags(readme, monkeypatch):
    commands = script_commands(readme)
    assert len(commands) > 10
    assert any(script.startswith("benchmarks/") for script, *_ in commands)
    for script, *argv in commands:
        assert (ROOT / script).is_file(), f"{readme}: {script} does not exist"
        parsed_flags(script, argv, monkeypatch)  # a flag argparse rejects fails here with exit 2


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^pip install -r requirements-dev\.txt && (pytest.*)$", readme, re.M)
    assert command, "README gives no test command"
    assert "requirements-dev.txt" in ci and re.search(rf"^{re.escape(command.group(1))}\s*$", ci, re.M)
