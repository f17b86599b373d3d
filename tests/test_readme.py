"""The README's console examples are what the tool prints (issue 22 item 11).

Every ```console block of README.md and docs/*.md is read: each ``$ spectrum ...``
command must parse against the real command line (every option it uses exists), and the
commands that run on the committed sample checkpoints are run through the installed
console script at 80 columns, in a scratch folder (sample checkpoints linked in, plots
written there), with the samples' configurations trusted as the README's main job does.
The table headers of the example output (a line followed by a rule of ``─``) and its
"N matrices analysed" line (the time masked) must be in the real output.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECTRUM = Path(sys.executable).parent / "spectrum"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Examples that need a live training run beside them (a folder the run writes into):
#: their commands are checked against the command line, not run.
NEEDS_A_RUN = ("watch",)


@dataclass
class Example:
    where: str
    command: str
    output: list[str] = field(default_factory=list)


def examples() -> list[Example]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.finditer(r"```console\n(.*?)```", text, re.S):
            line_no = text[:block.start()].count("\n") + 2
            current = None
            for line in block.group(1).splitlines():
                if line.startswith("$ "):
                    current = None
                    if line.startswith("$ spectrum"):
                        current = Example(f"{doc.name}:{line_no}", line[2:])
                        found.append(current)
                elif current is not None:
                    current.output.append(line)
    return found


EXAMPLES = examples()


def _norm(line: str) -> str:
    return " ".join(line.split())


def headers(lines: list[str]) -> list[str]:
    """Table headers: the lines right above a rule of box-drawing dashes."""
    return [_norm(a) for a, b in zip(lines, lines[1:])
            if b.strip() and set(b.strip()) <= {"─", " "} and a.strip()]


def counted(lines: list[str]) -> list[str]:
    return [re.sub(r" in [0-9.]+ s$", " in _ s", _norm(x)) for x in lines
            if re.match(r"\s*\d+ matri(x|ces) analysed", x)]


def options_of(command: str) -> set[str]:
    out = subprocess.run([str(SPECTRUM), *command.split(), "--help"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "200",
                                                     "NO_COLOR": "1"}).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out))


#: A markdown link or image ``[text](target)``; the target up to a space or ``)``.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(doc: Path) -> list[str]:
    """The relative link targets of a markdown file (fenced code and code spans left out)."""
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def test_the_readme_is_short():
    """Issue 23: the README is the pitch, the set-up, a tour and a table; the rest is docs/."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move reference material to docs/"


def test_every_relative_link_resolves():
    broken = [f"{doc.relative_to(ROOT)}: {target}" for doc in DOCS
              for target in relative_links(doc)
              if not (doc.parent / target.split("#")[0]).exists()]
    assert len(DOCS) > 2 and not broken, broken


def test_the_docs_have_examples():
    assert len(EXAMPLES) >= 6
    assert any("analyze" in e.command for e in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_every_option_of_an_example_exists(example):
    argv = shlex.split(example.command)[1:]
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else ""
    used = {a.split("=")[0] for a in argv if a.startswith("--")}
    assert used <= options_of(command), (example.where, used - options_of(command))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder to run the examples in, with the samples' configurations trusted."""
    d = tmp_path_factory.mktemp("readme")
    (d / "sample_checkpoints").symlink_to(ROOT / "sample_checkpoints")
    (d / "docs").mkdir()
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "XDG_DATA_HOME": str(d / "xdg"),
           "SPECTRUM_CACHE_DIR": str(d / "cache")}
    tomls = [str(p) for p in sorted((ROOT / "sample_checkpoints").glob("*/spectrum.toml"))]
    subprocess.run([str(SPECTRUM), "trust", *tomls], check=True, env=env, cwd=d,
                   capture_output=True, timeout=60)
    return d, env


RUNNABLE = [e for e in EXAMPLES if shlex.split(e.command)[1] not in NEEDS_A_RUN]


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.where for e in RUNNABLE])
def test_example_output_matches_the_tool(example, scratch):
    folder, env = scratch
    r = subprocess.run([str(SPECTRUM), *shlex.split(example.command)[1:]], cwd=folder,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), (example.where, r.returncode, r.stderr[-2000:])
    real = r.stdout.splitlines()
    missing = [h for h in headers(example.output) if h not in headers(real)]
    assert not missing, (example.where, missing, headers(real))
    for line in counted(example.output):
        assert line in counted(real), (example.where, line, counted(real))
