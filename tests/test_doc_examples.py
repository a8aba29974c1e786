"""Every ``liq …`` example the README's code blocks and the commands' help show parses: the
command exists, each option exists and takes its value's type (the callback is not run), and
every date in it is one ``parse_time`` accepts (inline mentions are fragments:
their dates are checked in test_timeutil)."""

from __future__ import annotations

import importlib
import itertools
import re
import shlex
from pathlib import Path

import pytest
import typer

from liqcli.cli.app import app
from liqcli.core.timeutil import parse_time

REPO = Path(__file__).resolve().parents[1]


def _commands(block: str) -> list[str]:
    """The ``liq`` command lines of a code block or help epilog: continuations joined, comments,
    pipes and redirections cut."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ").strip()
        if not re.match(r"liq (-|[a-z-]+(\s|$))", line):  # a command, not prose
            continue
        line = re.split(r"\s#\s|\s\|\s|\s>\s|\s&&\s", line)[0]
        out.append(line.strip())
    return out


def _examples() -> list[tuple[str, str]]:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", readme, re.S | re.M)
    found = [("README.md", cmd) for block in blocks for cmd in _commands(block)]
    for path in sorted((REPO / "liqcli" / "cli").glob("*.py")):
        module = importlib.import_module(f"liqcli.cli.{path.stem}")
        for name, value in vars(module).items():
            if name.startswith("EPILOG") and isinstance(value, str):
                found += [(path.name, cmd) for cmd in _commands(value)]
    return found


EXAMPLES = _examples()


def test_the_examples_are_found():
    sources = {source for source, _ in EXAMPLES}
    assert "README.md" in sources and "backtest.py" in sources and "mm.py" in sources
    assert len(EXAMPLES) > 80


@pytest.mark.parametrize(("source", "line"), EXAMPLES, ids=[f"{s}:{c}" for s, c in EXAMPLES])
def test_example_parses(source: str, line: str) -> None:
    args = shlex.split(line)[1:]
    ctx = typer.main.get_command(app).make_context("liq", args)
    group = ctx.command
    while True:  # down the subcommands; each parses its own options
        name, command, rest = group.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
        if not hasattr(command, "resolve_command"):
            break
        group = command
    for flag, value in itertools.pairwise(args):
        if flag in ("--start", "--end", "--since"):
            parse_time(value)
