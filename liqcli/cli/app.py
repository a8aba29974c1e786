"""The ``liq`` root command: global options, config, error handling, subcommand registry."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator, MutableMapping
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.main
from typer.core import TyperGroup

from liqcli import __version__
from liqcli.cli.common import AppState, teardown_skippable
from liqcli.core.config import default_data_dir, load_config
from liqcli.errors import LiqError

if TYPE_CHECKING:
    from typer._click import Command  # typer vendors click

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


# One module per subcommand, in help order; each exposes `register(app)`. Only working commands
# are listed.
COMMANDS: list[str] = ["watch", "pressure", "cascade", "map", "fetch", "paper", "backtest", "mm"]


def _build_command(name: str) -> Command:
    """The click command of ``liqcli.cli.<name>``, built as the root app would build it."""
    holder = typer.Typer(add_completion=False)
    import_module(f"liqcli.cli.{name}").register(holder)
    (info,) = holder.registered_commands
    return typer.main.get_command_from_info(
        info,
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode,
    )


class LazyCommands(MutableMapping[str, "Command"]):
    """The root group's subcommands, each imported and built on first lookup: ``liq map`` loads
    only liqcli.cli.map, not the websocket, HTTP and terminal-UI code of the others. Iterating
    (``liq --help``, completions) builds them all."""

    def __init__(self, names: list[str]) -> None:
        self._names = list(names)
        self._built: dict[str, Command] = {}

    def __getitem__(self, name: str) -> Command:
        if name not in self._built:
            if name not in self._names:
                raise KeyError(name)
            self._built[name] = _build_command(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        if name not in self._names:
            self._names.append(name)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._built.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class LiqRootGroup(LiqGroup):
    """``liq`` itself: the LiqGroup behaviour with the COMMANDS loaded lazily."""

    def __init__(self, *, commands: dict[str, Command] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = LazyCommands(COMMANDS)
        for name, command in (commands or {}).items():
            self.commands[name] = command


app = typer.Typer(
    name="liq",
    cls=LiqRootGroup,
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


def main() -> None:
    """The ``liq`` executable."""
    # The modules imported so far live as long as the process: keep the cyclic garbage collector
    # from walking their ~40k objects again and again (and from touching the pages a forked
    # child shares with us).
    gc.freeze()
    try:
        app(prog_name="liq")
    except SystemExit as exc:
        if exc.code in (0, None) and teardown_skippable():
            _exit_now()
        raise


def _exit_now() -> None:
    """Flush the standard streams and end the process without the interpreter's teardown; if a
    stream cannot be flushed (a closed pipe), return and let the normal exit report it."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    logging.shutdown()
    os._exit(0)
