"""Blocks copied between the standalone scripts, marked "# Copied from X.py", must read exactly
as in X.py (the way transformers keeps its copies). tests/test_conventions.py checks them;

    python tests/check_copies.py          # list the copies that differ from their source
    python tests/check_copies.py --fix    # rewrite them from their source

Change a shared block in its source script, then run --fix.
"""
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["Basic_usage_of_lightning.py", "check_point_save.py", "check_point_load.py",
           "quant_lightning_ptq.py", "quant_lightning_qat.py", "quant_with_only_lightning.py",
           "callbacks_lightning.py", "loggers_lightning.py", "cli_lightning.py"]
# Not scripts, but they hold marked copies too: the benchmarks' network must be the script's.
ALSO_CHECKED = ["benchmarks/common.py"]
COPY_MARK = re.compile(r"^# Copied from (\S+\.py)$")


def top_level_blocks(script: str) -> dict:
    """name -> (first line, last line, text with decorators, the marker's source script or None) of
    every top-level function, class and single-name assignment; lines count from 1."""
    source = (ROOT / script).read_text()
    lines = source.splitlines()
    blocks = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        else:
            continue
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        marker = COPY_MARK.match(lines[first - 2]) if first >= 2 else None
        blocks[name] = (first, node.end_lineno, "\n".join(lines[first - 1:node.end_lineno]),
                        marker.group(1) if marker else None)
    return blocks


def copies() -> list:
    """(script, name, source script) of every marked copy."""
    return [(script, name, block[3]) for script in SCRIPTS + ALSO_CHECKED
            for name, block in top_level_blocks(script).items() if block[3]]


def stale(script: str) -> list:
    """(name, source script) of the copies in script that differ from their source."""
    return [(name, origin) for copy_script, name, origin in copies() if copy_script == script
            and name in top_level_blocks(origin)
            and top_level_blocks(origin)[name][2] != top_level_blocks(script)[name][2]]


def fix(script: str) -> list:
    """Rewrite every stale copy in script from its source; returns their names."""
    names = stale(script)
    lines = (ROOT / script).read_text().splitlines()
    blocks = top_level_blocks(script)
    for name, origin in sorted(names, key=lambda item: -blocks[item[0]][0]):  # bottom up: line numbers hold
        first, last, _, _ = blocks[name]
        lines[first - 1:last] = top_level_blocks(origin)[name][2].splitlines()
    (ROOT / script).write_text("\n".join(lines) + "\n")
    return [name for name, _ in names]


if __name__ == "__main__":
    found = {script: (fix(script) if "--fix" in sys.argv else [n for n, _ in stale(script)]) for script in SCRIPTS + ALSO_CHECKED}
    for script, names in found.items():
        if names:
            print(f"{script}: {'rewrote' if '--fix' in sys.argv else 'differs'}: {', '.join(names)}")
    sys.exit(1 if any(found.values()) and "--fix" not in sys.argv else 0)
