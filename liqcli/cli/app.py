"""The ``liq`` root command: global options, config, error handling, subcommand registry."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from liqcli import __version__
from liqcli.cli.common import AppState
from liqcli.core.config import default_data_dir, load_config
from liqcli.errors import LiqError

log = logging.getLogger("liq")


def _fail(exc: BaseException, code: int) -> typer.Exit:
    # One line on stderr; the traceback only at --log-level debug.
    log.debug("traceback", exc_info=exc)
    typer.echo(f"liq: error: {exc}", err=True)
    return typer.Exit(code)


class LiqGroup(TyperGroup):
    """Root group: loads the config file as click's default_map and turns expected failures into
    one-line errors with CONTRACT.md exit codes."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ):
        if parent is None and "default_map" not in extra:
            try:
                extra["default_map"] = load_config()
            except LiqError as exc:
                raise _fail(exc, exc.exit_code) from None
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LiqError as exc:
            raise _fail(exc, exc.exit_code) from None


app = typer.Typer(
    name="liq",
    cls=LiqGroup,
    help=(
        "Command-line toolkit for crypto-derivatives traders: live liquidations, cascades, "
        "liquidation maps, pressure scores, Binance futures metrics.\n\n"
        "\b\nExamples:\n"
        "  liq watch BTCUSDT                      # live liquidations: Binance, OKX, Bybit\n"
        "  liq fetch BTCUSDT ETHUSDT --since 7d   # store Binance futures metrics\n"
        "  liq --data-dir /srv/liq fetch BTCUSDT --quiet   # from cron\n"
        "  liq COMMAND --help                     # every command has examples"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"liq {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="LIQ_DATA_DIR",
            help="Root of all stored data [default: $XDG_DATA_HOME/liq or ~/.local/share/liq].",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            envvar="LIQ_LOG_LEVEL",
            help="debug, info, warning or error. debug also shows tracebacks.",
        ),
    ] = "warning",
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(
            f"{log_level!r} is not one of debug, info, warning, error", param_hint="--log-level"
        )
    logging.basicConfig(level=level, stream=sys.stderr, format="liq: %(levelname)s: %(message)s")
    logging.getLogger("liq").setLevel(level)
    ctx.obj = AppState(data_dir=(data_dir or default_data_dir()).expanduser(), log_level=log_level)


def _register() -> None:
    # One module per subcommand; each exposes `register(app)`. Only working commands are listed.
    from importlib import import_module

    for name in COMMANDS:
        import_module(f"liqcli.cli.{name}").register(app)


COMMANDS: list[str] = ["watch", "pressure", "cascade", "map", "fetch"]
_register()


def main() -> None:
    app(prog_name="liq")
