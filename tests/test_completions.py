"""completions/ must match the current app: regenerate with
``python -m liqcli.cli.completions --write completions/``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from liqcli.cli.app import app
from liqcli.cli.completions import bash, command_tree, generate_all
from liqcli.render.output import Format

COMPLETIONS = Path(__file__).resolve().parent.parent / "completions"


@pytest.mark.parametrize("fname", ["liq.bash", "liq.zsh", "liq.fish"])
def test_committed_scripts_match_app(fname):
    expected = generate_all(app)[fname]
    actual = (COMPLETIONS / fname).read_text()
    assert actual == expected, (
        f"{fname} is stale: run python -m liqcli.cli.completions --write completions/"
    )


def test_every_command_and_option_is_offered():
    _root, cmds = command_tree(app)
    text = generate_all(app)
    for cmd in cmds:
        for script in text.values():
            assert cmd.name in script
        for opt in cmd.options:
            assert opt.names[0] in text["liq.bash"]
    assert "--data-dir" in text["liq.bash"]


def _complete_in_bash(script: str, words: list[str]) -> list[str]:
    line = " ".join(words)
    prog = (
        f"{script}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
        "_liq; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    out = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_script_completes_subcommands_and_choices():
    probe = typer.Typer(add_completion=False)

    @probe.callback()
    def root(data_dir: str = typer.Option("", "--data-dir")) -> None: ...

    @probe.command("fetch")
    def fetch(fmt: Format = typer.Option(Format.table, "--format")) -> None: ...

    @probe.command("watch")
    def watch(min_usd: float = typer.Option(0.0, "--min-usd")) -> None: ...

    script = bash(probe)
    assert sorted(_complete_in_bash(script, ["liq", "w"])) == ["watch"]
    assert _complete_in_bash(script, ["liq", "watch", "--mi"]) == ["--min-usd"]
    assert "--data-dir" in _complete_in_bash(script, ["liq", "--d"])
    assert sorted(_complete_in_bash(script, ["liq", "fetch", "--format", "''"])) == [
        "csv",
        "json",
        "table",
    ]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completes_dataset_names_not_options():
    script = bash(app)
    datasets = _complete_in_bash(script, ["liq", "fetch", "BTCUSDT", "-d", ""])
    assert "open_interest" in datasets and "agg_trades" in datasets
    assert not [w for w in datasets if w.startswith("-")]
    assert _complete_in_bash(script, ["liq", "fetch", "BTCUSDT", "--dataset", "fu"]) == ["funding"]
    # A free value (a date) is not offered the option names either.
    assert _complete_in_bash(script, ["liq", "fetch", "BTCUSDT", "--since", ""]) == []
