"""The documentation is part of the tutorial: the README and the chapters in docs/, in English and
in Japanese. Their code must run, their commands must parse, their links must resolve, and each
English page and its Japanese twin must hold the same code."""
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from conftest import ROOT, script_env
from test_conventions import SCRIPTS, parsed_flags

CHAPTERS = ["basics", "trainer_options", "checkpoints", "quantization", "callbacks_and_loggers", "performance", "cli"]
# (English page, its Japanese twin), as paths under the repository root.
TWINS = [("README.md", "README.ja.md")] + [(f"docs/{name}.md", f"docs/ja/{name}.md") for name in CHAPTERS]
ENGLISH = [english for english, _ in TWINS]
PAGES = [page for twin in TWINS for page in twin]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$", re.M)
WRAPPERS = {"timeout", "taskset", "nohup", "time", "env"}  # commands that run the command after them


def text_of(page: str) -> str:
    return (ROOT / page).read_text(encoding="utf-8")


def code_blocks(page: str, language: str = None) -> list:
    blocks = FENCE.findall(text_of(page))
    return [code for lang, code in blocks if language is None or lang == language]


def prose_of(page: str) -> str:
    """The page without its code blocks and inline code, where links and headings live."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text_of(page)))


def script_commands(page: str) -> list:
    """Every `python <script>.py ...` of the bash blocks, as argv lists: continuation lines joined,
    comments, VAR=value prefixes, wrappers such as `timeout 60` and redirections dropped, and
    lines cut at &&, ||, ;, & and |."""
    commands = []
    for block in code_blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"&&|\|\||[;&|]", line):
                words = shlex.split(part)
                # A redirection and, when it stands alone (`> file`), its target.
                words = [word for i, word in enumerate(words) if not re.match(r"^\d*[<>]", word)
                         and not (i and re.fullmatch(r"\d*[<>]+&?", words[i - 1]))]
                while words and re.match(r"^\w+=", words[0]):  # VAR=value before the command
                    words.pop(0)
                if words and words[0] in WRAPPERS and "python" in words:
                    words = words[words.index("python"):]
                if len(words) >= 2 and words[0] == "python" and words[1].endswith(".py"):
                    commands.append(words[1:])
    return commands


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    kept = "".join(ch for ch in heading if ch in "-_ " or unicodedata.category(ch)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(page: str) -> set:
    found, seen = set(), {}
    for _, heading in HEADING.findall(FENCE.sub("", text_of(page))):
        name = slug(heading)
        found.add(name if name not in seen else f"{name}-{seen[name]}")
        seen[name] = seen.get(name, 0) + 1
    return found | set(re.findall(r'<a (?:id|name)="([^"]+)"', text_of(page)))


def local_links(page: str) -> list:
    """(target path relative to the root, anchor or '') of every link that is not to the web."""
    links = []
    for _, target in LINK.findall(prose_of(page)):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (ROOT / page).parent / path if path else ROOT / page
        links.append((resolved.resolve().relative_to(ROOT).as_posix(), anchor))
    return links


PYTHON_PAGES = [page for page in ENGLISH if code_blocks(page, "python")]


def test_every_markdown_file_is_covered():
    on_disk = {path.relative_to(ROOT).as_posix()
               for pattern in ("*.md", "docs/*.md", "docs/ja/*.md") for path in ROOT.glob(pattern)}
    assert on_disk == set(PAGES)


@pytest.mark.parametrize("english, japanese", TWINS)
def test_twins_hold_the_same_code(english, japanese):
    code = code_blocks(english)
    assert len(code) > 0
    assert code == code_blocks(japanese)


@pytest.mark.parametrize("english, japanese", TWINS)
def test_twins_have_the_same_sections_and_images(english, japanese):
    def levels(page):
        return [len(hashes) for hashes, _ in HEADING.findall(FENCE.sub("", text_of(page)))]

    def images(page):
        return [(ROOT / page).parent.joinpath(target).resolve()
                for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", prose_of(page))]

    assert len(levels(english)) > 2
    assert levels(english) == levels(japanese)
    assert images(english) == images(japanese)


def test_python_blocks_are_found():
    """The test below is not vacuous: the pages hold this many runnable blocks."""
    assert len(PYTHON_PAGES) >= 4
    assert sum(len(code_blocks(page, "python")) for page in PYTHON_PAGES) >= 10


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_every_python_block_runs(page, mnist_dir, tmp_path):
    """The ```python blocks of one page, in order, in one fresh interpreter, on synthetic MNIST; the
    scripts import as modules (PYTHONPATH), as in a notebook beside them.
    (The Japanese twin holds the same blocks, which the twin test checks.)"""
    blocks = code_blocks(page, "python")
    program = "\n\n".join(f"print('--- block {i}', flush=True)\n{block}" for i, block in enumerate(blocks))
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                            env=script_env(PATH_DATASETS=str(mnist_dir), PYTHONPATH=str(ROOT)), timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("--- block") == len(blocks)


@pytest.mark.parametrize("page", ENGLISH)
def test_every_script_command_names_a_script_and_valid_flags(page, monkeypatch, tmp_path):
    """Each command line is parsed by its script's own parser. Input files the commands name (a
    checkpoint an earlier command wrote) exist as empty files in a scratch folder, so that a flag
    that checks for its file passes; the outputs are not run or compared."""
    commands = script_commands(page)
    assert len(commands) > 0, f"{page} shows no command"
    monkeypatch.chdir(tmp_path)
    rejected = []
    for script, *argv in commands:
        assert (ROOT / script).is_file(), f"{page}: {script} does not exist"
        for before, word in zip(["", *argv], argv):
            names_a_file = "/" in word or before in ("--config", "-c")  # a LightningCLI config file
            if not word.startswith("-") and names_a_file and Path(word).suffix and not Path(word).is_absolute():
                (tmp_path / word).parent.mkdir(parents=True, exist_ok=True)
                # A file of the repository (a config in configs/) as it is; an empty config otherwise.
                in_repo = ROOT / word
                (tmp_path / word).write_bytes(in_repo.read_bytes() if in_repo.is_file() else
                                              b"{}\n" if Path(word).suffix == ".yaml" else b"")
        try:
            parsed_flags(script, argv, monkeypatch)
        except SystemExit as exit_:  # argparse rejects a flag with exit code 2
            rejected.append(f"python {shlex.join([script, *argv])}  (exit {exit_.code})")
    assert not rejected, f"{page}: the scripts reject these commands:\n" + "\n".join(rejected)


def test_commands_cover_every_script_and_the_benchmarks():
    scripts = {script for page in ENGLISH for script, *_ in script_commands(page)}
    assert set(SCRIPTS) <= scripts
    assert any(script.startswith("benchmarks/") for script in scripts)


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page):
    links = local_links(page)
    assert len(links) > 0
    for target, anchor in links:
        assert (ROOT / target).exists(), f"{page}: link to {target}, which does not exist"
        if anchor and target.endswith(".md"):
            assert anchor in anchors(target), f"{page}: link to {target}#{anchor}, which has no such heading"


@pytest.mark.parametrize("english, japanese", TWINS[1:])
def test_chapters_link_to_their_readme_and_their_twin(english, japanese):
    assert {"README.md", japanese} <= {target for target, _ in local_links(english)}
    assert {"README.ja.md", english} <= {target for target, _ in local_links(japanese)}


@pytest.mark.parametrize("readme, folder", [("README.md", "docs"), ("README.ja.md", "docs/ja")])
def test_readmes_link_to_each_other_and_to_every_chapter(readme, folder):
    targets = {target for target, _ in local_links(readme)}
    other = "README.ja.md" if readme == "README.md" else "README.md"
    assert {other} | {f"{folder}/{name}.md" for name in CHAPTERS} <= targets


@pytest.mark.parametrize("readme", ["README.md", "README.ja.md"])
def test_readme_stays_a_spine(readme):
    """The README maps the scripts; the deep dives live in docs/."""
    assert 100 < len(text_of(readme).splitlines()) <= 650


@pytest.mark.parametrize("page", PAGES)
def test_pages_name_no_folder_of_our_ci_machines(page):
    assert "../shared" not in text_of(page), f"{page}: use /path/to/datasets or PATH_DATASETS"


def test_ci_runs_the_readme_test_command():
    readme = text_of("README.md")
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^pip install -r requirements-dev\.txt && (pytest.*)$", readme, re.M)
    assert command, "README gives no test command"
    assert "requirements-dev.txt" in ci and re.search(rf"^{re.escape(command.group(1))}\s*$", ci, re.M)
