"""The docs run as written: the README's Python examples execute, and every ``lifevit ...`` command line in
README.md and docs/*.md parses with the real command-line parser."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from lifevit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "zsh"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(_python_blocks()) >= 3


def test_readme_python_examples_run():
    namespace: dict = {}
    for i, block in enumerate(_python_blocks()):
        try:
            exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the point
            pytest.fail(f"README python block {i} failed: {err!r}\n{block}")


# ------------------------------------------------------------------ command lines in the docs
def lifevit_argv(line: str):
    """The arguments after ``lifevit`` of a shell command line, or ``None`` when it does not run lifevit.

    Understands ``$`` prompts, trailing ``# comments``, ``VAR=value`` prefixes, ``time`` / ``/usr/bin/time -v``,
    ``torchrun ... -m lifevit ...`` and ``python -m lifevit ...``; stops at ``|``, ``&&``, ``;`` and redirections;
    drops ``...`` (elided arguments) and ``[...]`` (optional parts of a synopsis).
    """
    line = line.strip()
    if line.startswith("$ "):
        line = line[2:]
    line = re.sub(r"\[[^\]]*\]", " ", line)
    tokens = shlex.split(line, comments=True)
    for i, tok in enumerate(tokens):
        if tok in ("|", "&&", "||", ";", ">", ">>", "2>", "2>&1", "&"):
            tokens = tokens[:i]
            break
    tokens = [t for t in tokens if t not in ("...", "…")]
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if tokens and Path(tokens[0]).name == "time":
        tokens = tokens[1:]
        while tokens and tokens[0].startswith("-"):
            tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] == "lifevit":
        return tokens[1:]
    if tokens[0] == "torchrun" or Path(tokens[0]).name.startswith("python"):
        for i in range(len(tokens) - 1):
            if tokens[i] == "-m":
                return tokens[i + 2 :] if tokens[i + 1] == "lifevit" else None
    return None


def command_lines(path: Path):
    """``(line number, command)`` of every ``lifevit`` command in ``path``: lines of shell code blocks (with
    ``\\`` continuations joined) and inline code spans that start with ``lifevit`` and hold an option."""
    lines = path.read_text().splitlines()
    found = []
    prose = []  # (line number, text) outside code blocks
    fence = None
    pending, start = "", 0
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            pending = ""
            continue
        if fence is None:
            prose.append((no, line))
            continue
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = no
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        found.append((start, pending + stripped))
        pending = ""
    text = "\n".join(t for _, t in prose)
    offsets = [n for n, t in prose for _ in range(len(t) + 1)]  # character -> line number
    for m in re.finditer(r"`([^`]+)`", text):
        span = " ".join(m.group(1).split())
        # a span with an option is a command line; `lifevit detect eval` alone only names a command
        if span.startswith(("lifevit ", "torchrun ")) and re.search(r"(^|\s)--?\w", span):
            found.append((offsets[m.start()], span))
    return [(no, cmd) for no, cmd in found if lifevit_argv(cmd) is not None]


def parse_problem(argv):
    """``None`` when the real parser accepts ``argv``, else argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as stop:
        if stop.code not in (0, None):  # --help exits 0
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {stop.code}"
    return None


def test_the_command_line_extractor():
    doc = (
        "Run `lifevit classify train --epochs 2` (see `lifevit classify`) or\n"
        "```bash\n"
        "$ torchrun --nproc_per_node 2 -m lifevit segment train \\\n"
        "    --config c.yaml --output runs/x   # a comment\n"
        "python -m pytest tests -q\n"
        "OMP_NUM_THREADS=1 lifevit detect eval runs/det\n"
        "```\n"
        "```python\nimport lifevit\n```\n"
    )
    path = Path(__file__).parent / ".docs_extractor_probe.md"
    try:
        path.write_text(doc)
        found = command_lines(path)
    finally:
        path.unlink()
    assert found == [
        (3, "$ torchrun --nproc_per_node 2 -m lifevit segment train  --config c.yaml --output runs/x   # a comment"),
        (6, "OMP_NUM_THREADS=1 lifevit detect eval runs/det"),
        (1, "lifevit classify train --epochs 2"),
    ]
    assert lifevit_argv(found[0][1]) == ["segment", "train", "--config", "c.yaml", "--output", "runs/x"]
    assert parse_problem(lifevit_argv(found[0][1])) is None
    assert "--checkpoint" in parse_problem(lifevit_argv(found[1][1]))  # the old positional checkpoint
    assert parse_problem(["classify", "train", "--no-such-flag"]) is not None


def test_every_command_in_the_docs_parses():
    failures = []
    total = 0
    for path in DOCS:
        for no, cmd in command_lines(path):
            total += 1
            problem = parse_problem(lifevit_argv(cmd))
            if problem:
                failures.append(f"{path.relative_to(ROOT)}:{no}: {cmd}\n    -> {problem}")
    assert total >= 5, f"found only {total} lifevit command lines in README.md and docs/*.md"
    assert not failures, f"{len(failures)} of {total} command lines do not parse:\n" + "\n".join(failures)
