"""The root command: version, help, config precedence, error and exit-code rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from liqcli import __version__
from liqcli.cli.app import COMMANDS, LiqGroup, app
from liqcli.cli.common import state
from liqcli.errors import DataError, UsageError

runner = CliRunner()


def _probe_app() -> typer.Typer:
    """A throwaway app with the same root group, to observe option precedence and error mapping."""
    probe = typer.Typer(cls=LiqGroup, add_completion=False)
    probe.callback()(app.registered_callback.callback)

    @probe.command("show")
    def show(ctx: typer.Context, min_usd: float = typer.Option(0.0, envvar="LIQ_MIN_USD")) -> None:
        typer.echo(f"data_dir={state(ctx).data_dir} min_usd={min_usd}")

    @probe.command("boom")
    def boom(kind: str) -> None:
        if kind == "usage":
            raise UsageError("invalid period '7x'")
        if kind == "data":
            raise DataError("binance: malformed JSON from /fapi/v1/klines")
        raise KeyboardInterrupt

    return probe


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"liq {__version__}"


def test_python_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "liqcli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"liq {__version__}"


def test_help_lists_examples():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Examples" in result.output and "--data-dir" in result.output


def test_unknown_command_is_usage_error():
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2
    assert "'map'" in runner.invoke(app, ["mapp"]).output  # close matches are suggested


def test_help_lists_every_command_in_order_with_its_help():
    lines = runner.invoke(app, ["--help"]).output.split("Commands", 1)[1].splitlines()
    listed = [line.split()[0] for line in lines if line.startswith("  ")]
    assert listed == COMMANDS
    assert any(line.split()[0] == "map" and "Liquidation map" in line for line in lines if line)


def test_a_command_imports_only_its_own_module():
    """Subcommands are loaded lazily: ``liq map`` never imports the websocket/HTTP/terminal code
    of watch, cascade, pressure or fetch."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from liqcli.cli.app import app\n"
        "result = CliRunner().invoke(app, ['map', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('liqcli.cli.'))))\n"
        "print(' '.join(m for m in ('websockets', 'httpx', 'rich') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cli_modules, heavy = out.stdout.splitlines()
    assert cli_modules.split() == ["liqcli.cli.app", "liqcli.cli.common", "liqcli.cli.map"]
    assert heavy == ""


def test_bad_log_level_is_usage_error():
    probe = _probe_app()
    result = runner.invoke(probe, ["--log-level", "loud", "show"])
    assert result.exit_code == 2
    assert "loud" in result.output


@pytest.mark.parametrize(
    ("kind", "code", "text"),
    [("usage", 2, "invalid period '7x'"), ("data", 1, "malformed JSON"), ("interrupt", 130, "")],
)
def test_expected_failures_are_one_line(kind, code, text):
    result = runner.invoke(_probe_app(), ["boom", kind])
    assert result.exit_code == code
    assert "Traceback" not in result.output
    if text:
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert lines == [f"liq: error: {lines[0].split('liq: error: ', 1)[1]}"]
        assert text in lines[0]


def test_precedence_flag_env_config_default(tmp_path, monkeypatch):
    probe = _probe_app()
    cfg = tmp_path / "config.toml"
    cfg.write_text('data-dir = "/from/config"\n[show]\nmin-usd = 5000\n')

    # defaults
    out = runner.invoke(probe, ["show"]).output
    assert "min_usd=0.0" in out and "liq" in out

    # config beats defaults
    monkeypatch.setenv("LIQ_CONFIG", str(cfg))
    out = runner.invoke(probe, ["show"]).output
    assert "data_dir=/from/config" in out and "min_usd=5000.0" in out

    # env beats config
    monkeypatch.setenv("LIQ_DATA_DIR", "/from/env")
    monkeypatch.setenv("LIQ_MIN_USD", "7000")
    out = runner.invoke(probe, ["show"]).output
    assert "data_dir=/from/env" in out and "min_usd=7000.0" in out

    # flags beat env
    out = runner.invoke(probe, ["--data-dir", "/from/flag", "show", "--min-usd", "9000"]).output
    assert "data_dir=/from/flag" in out and "min_usd=9000.0" in out


def test_broken_config_is_one_line_usage_error(tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text("this is = = not toml\n")
    monkeypatch.setenv("LIQ_CONFIG", str(cfg))
    result = runner.invoke(_probe_app(), ["show"])
    assert result.exit_code == 2
    assert "config.toml" in result.output and "Traceback" not in result.output


def test_missing_explicit_config(monkeypatch, tmp_path):
    monkeypatch.setenv("LIQ_CONFIG", str(tmp_path / "nope.toml"))
    result = runner.invoke(_probe_app(), ["show"])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir() or (os.cpu_count() or 1) < 2,
    reason="counts threads in Linux /proc on a multi-core machine",
)
@pytest.mark.parametrize(("user_setting", "extra_threads"), [(None, 0), ("2", 1)])
def test_numpy_starts_no_idle_blas_threads(user_setting, extra_threads):
    code = (
        "import os\n"
        "from liqcli.cli.common import import_numpy\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "import_numpy()\n"
        "print(len(os.listdir('/proc/self/task')) - before, os.environ.get('OPENBLAS_NUM_THREADS'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if user_setting:
        env["OPENBLAS_NUM_THREADS"] = user_setting
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == [str(extra_threads), str(user_setting)]


def test_unknown_config_keys_are_named_with_the_known_ones(tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text('data_dirr = "/x"\n[show]\nmin-usd = 5000\nmin_used = 1\n[nope]\na = 1\n')
    monkeypatch.setenv("LIQ_CONFIG", str(cfg))
    result = runner.invoke(_probe_app(), ["show"])
    assert result.exit_code == 0 and "min_usd=5000.0" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("liq: warning:")]
    assert len(warnings) == 3, result.stderr
    assert "unknown key 'data_dirr'" in warnings[0] and "data_dir" in warnings[0]
    assert "unknown key 'min_used' in [show] (known: min_usd)" in warnings[1]
    assert "unknown section [nope]" in warnings[2] and str(cfg) in warnings[2]
    good = tmp_path / "good.toml"
    good.write_text('log_level = "warning"\n[map]\nthreshold = 5\n[fetch]\nperiod = "15m"\n')
    monkeypatch.setenv("LIQ_CONFIG", str(good))
    checked = runner.invoke(app, ["--data-dir", str(tmp_path), "map", "BTCUSDT", "--window", "1h"])
    assert checked.exit_code == 2 and "warning" not in checked.stderr, checked.stderr


def test_help_placeholders_are_one_style():
    import re

    for name in [None, *COMMANDS]:
        args = ["--help"] if name is None else [name, "--help"]
        text = runner.invoke(app, args).stdout
        assert not re.search(r"<[a-z][^>]*>", text), (name, re.findall(r"<[a-z][^>]*>", text))
        usage = text.splitlines()[0]
        assert "{" not in usage and "}" not in usage, usage
    assert runner.invoke(app, ["fetch", "--help"]).stdout.startswith(
        "Usage: liq fetch [OPTIONS] SYMBOL..."
    )
    assert "--start WHEN" in runner.invoke(app, ["map", "--help"]).stdout


def test_warnings_have_one_prefix(tmp_path):
    script = (
        "import logging, sys\n"
        "from liqcli.cli.app import app\n"
        "@app.command('warnprobe')\n"
        "def warnprobe():\n"
        "    logging.getLogger('liq').warning('something odd')\n"
        "sys.argv = ['liq', 'warnprobe']\n"
        "app(prog_name='liq')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "LIQ_DATA_DIR": str(tmp_path)})  # fmt: skip
    assert result.stderr == "liq: warning: something odd\n", result.stderr


def test_config_tables_of_other_commands_are_not_loaded_to_check_them(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[watch]\nmin_usdd = 1\n[map]\nthreshhold = 5\n")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from liqcli.cli.app import app\n"
        f"result = CliRunner().invoke(app, ['--data-dir', {str(tmp_path)!r}, 'map', 'BTCUSDT',"
        " '--window', '1h'])\n"
        "print(result.stderr.replace(chr(10), ' | '))\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('liqcli.cli.'))))\n"
    )
    env = {**os.environ, "LIQ_CONFIG": str(cfg)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    stderr, modules = out.stdout.splitlines()
    assert "unknown key 'threshhold' in [map]" in stderr and "min_usdd" not in stderr
    assert "liqcli.cli.watch" not in modules.split()
