"""The documentation's commands still work: every fenced shell command in README.md and docs/*.md that runs
`hopscotch`, a benchmark in bench/ or scripts/dev.sh is checked against the code it names.

- `hopscotch ...`: parsed by the CLI's own parser (a renamed or removed flag, or a bad value, fails);
- `python bench/NAME.py ...`: the script is run in a fresh process up to its argument parsing (its imports and its
  flags are checked; the benchmark itself does not run);
- `bash scripts/dev.sh CMD`: CMD is one of the script's commands.
Lines that are not commands (`a | b` alternatives, `[flags]`) are skipped; the test counts what it checked.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHONS = {"python", "python3", ".venv/bin/python", "$PY"}


def shell_commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks of a markdown text (continuations joined, comments dropped), then
    the inline `code` spans that start with a python running bench/ or with `hopscotch ` (a command in prose)."""
    out = []
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        # a mention such as `hopscotch eval` or `--skip ...` is not a command; a span with a flag and no "..." is
        if re.match(r"^(?:[A-Z_]+=\S+ )*(?:\S*python3? bench/|hopscotch [a-z])", span) and "..." not in span \
                and (" -" in span or "bench/" in span):
            out.append(span)
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def words(line: str) -> list[str] | None:
    """The argv of a command line without leading VAR=value assignments, or None when it is not one command."""
    try:
        argv = shlex.split(line, comments=True)
    except ValueError:
        return None
    if any(t in ("|", "||", "&&", ";") or t.startswith("[") or ("|" in t and not t.startswith("-")) for t in argv):
        return None
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv = argv[1:]
    return argv or None


def documented() -> list[tuple[str, str, list[str]]]:
    """(file, line, argv) of every documented command this test knows how to check."""
    found = []
    for path in DOCS:
        for line in shell_commands(path.read_text()):
            argv = words(line)
            if argv is None:
                continue
            if argv[0] == "hopscotch" or (argv[0] in PYTHONS and argv[1:3] == ["-m", "hopscotch_core.cli"]):
                found.append((path.name, line, argv))
            elif argv[0] in PYTHONS and len(argv) > 1 and argv[1].startswith("bench/"):
                found.append((path.name, line, argv))
            elif argv[:2] == ["bash", "scripts/dev.sh"]:
                found.append((path.name, line, argv))
    return found


COMMANDS = documented()
IDS = [f"{where}:{n}" for n, (where, _, _) in enumerate(COMMANDS)]


def cases(keep):
    return [pytest.param(*c, id=i) for c, i in zip(COMMANDS, IDS) if keep(c[2])]


def test_the_docs_document_commands_of_each_kind():
    kinds = {argv[0] if argv[0] in ("hopscotch", "bash") else "bench" for _, _, argv in COMMANDS}
    assert kinds == {"hopscotch", "bash", "bench"}, kinds
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("where,line,argv", cases(lambda a: a[0] == "hopscotch" or a[1:3] == ["-m", "hopscotch_core.cli"]))
def test_documented_hopscotch_commands_parse(where, line, argv):
    from hopscotch_core import cli

    args = argv[1:] if argv[0] == "hopscotch" else argv[3:]
    try:
        cli.build_parser().parse_args(args)
    except SystemExit as e:
        assert e.code == 0, f"{where}: `{line}` is refused by the CLI's parser"


BENCH_PARSE_ONLY = """
import argparse, runpy, sys
parse = argparse.ArgumentParser.parse_args
def parse_then_stop(self, *a, **k):
    parse(self, *a, **k)
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = parse_then_stop
sys.argv = sys.argv[1:]
sys.path.insert(0, __import__("os").path.dirname(sys.argv[0]))  # as `python bench/X.py` does
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("where,line,argv", cases(lambda a: len(a) > 1 and a[1].startswith("bench/")))
def test_documented_benchmark_commands_import_and_parse(where, line, argv):
    script = ROOT / argv[1]
    assert script.is_file(), f"{where}: `{line}` names {argv[1]}, which does not exist"
    proc = subprocess.run([sys.executable, "-c", BENCH_PARSE_ONLY, str(script), *argv[2:]], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, f"{where}: `{line}` fails before it starts:\n{proc.stderr[-2000:]}"


@pytest.mark.parametrize("where,line,argv", cases(lambda a: a[0] == "bash"))
def test_documented_dev_script_commands_exist(where, line, argv):
    script = (ROOT / "scripts" / "dev.sh").read_text()
    known = set(re.findall(r"^\s+([a-z]+)\)", script, re.M))
    assert len(argv) > 2 and argv[2] in known, f"{where}: `{line}`: dev.sh knows {sorted(known)}"


def test_the_checker_fails_on_a_removed_flag():
    """What the parse check does when a documented flag no longer exists (here: one that never did)."""
    from hopscotch_core import cli

    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["run", "--model", "default", "--no-such-flag", "1"])
    assert e.value.code == 2


def test_no_internal_planning_words_in_what_users_read():
    pattern = re.compile(r"issue [0-9]+|the .* issue's", re.I)
    files = [*DOCS, ROOT / "app.py", *(ROOT / "app_pages").glob("*.py"), *(ROOT / "hopscotch_core").rglob("*.py")]
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert not hits, hits
