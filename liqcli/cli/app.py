"""The ``liq`` root command: global options, config, error handling, subcommand registry."""

from __future__ import annotations

import gc
import logging
import os
import re
import sys
import typing
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from enum import Enum
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.main
from typer.core import TyperGroup

try:  # typer's coercion internals (already imported by typer.core): see QuickCoercion
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_choice, coerce_cli_path
    from typer.core import _TyperParameter
except ImportError:  # another typer: its own coercion, nothing skipped
    RuntimeParam = None  # type: ignore[assignment,misc]

from liqcli import __version__
from liqcli.cli.common import AppState, teardown_skippable
from liqcli.core.config import default_data_dir, load_config
from liqcli.errors import LiqError, UsageError

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
            if not any(a in ("--help", "-h") for a in args):
                invoked = next((a for a in args if a in self.commands), None)
                for warning in unknown_config_keys(self, extra["default_map"], invoked):
                    typer.echo(f"liq: warning: {config_path_text()}: {warning}", err=True)
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LiqError as exc:
            raise _fail(exc, exc.exit_code) from None
        except OSError as exc:
            # The last net under every command: a file or directory that cannot be read or
            # written is a runtime failure named in one line, not a traceback.
            if isinstance(exc, BrokenPipeError):
                raise
            raise _fail(LiqError(_os_error_text(exc)), 1) from None
        except Exception as exc:
            if not type(exc).__module__.startswith("polars"):
                raise
            # Polars' errors (a corrupt Parquet file, an unparseable CSV) carry hints after the
            # first line; the first line names the problem.
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise _fail(LiqError(f"cannot read data: {text}"), 1) from None


def unknown_config_keys(
    group: Any, config: dict[str, Any], invoked: str | None = None
) -> list[str]:
    """Config keys no option reads (a typo is otherwise silently ignored): one message each,
    naming the key and the keys that would be read there. The options of a command's table are
    checked when that command runs (building the others would import them all)."""
    root_keys = sorted(p.name for p in group.params if p.name)
    commands = list(group.commands)
    out = []
    for key, value in config.items():
        if isinstance(value, dict):
            if key not in commands:
                out.append(f"unknown section [{key}] (commands: {', '.join(commands)})")
                continue
            if invoked is not None and key != invoked:
                continue
            names = sorted(p.name for p in group.commands[key].params if p.name)
            for option in value:
                if option not in names and not isinstance(value[option], dict):
                    out.append(f"unknown key {option!r} in [{key}] (known: {', '.join(names)})")
        elif key not in root_keys:
            out.append(
                f"unknown key {key!r} (known at the top: {', '.join(root_keys)}; "
                f"command options go under [command])"
            )
    return out


def config_path_text() -> str:
    from liqcli.core.config import default_config_path

    return os.environ.get("LIQ_CONFIG") or str(default_config_path())


def _os_error_text(exc: OSError) -> str:
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {reason}" if where else reason


def check_data_dir(path: Path) -> None:
    """--data-dir must be a directory or a path that can become one: a plain file there (or at
    a parent) is a usage error before any command runs."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is" if candidate == path else f"is under {candidate}, which is"
                raise UsageError(f"--data-dir {path} {what} a file, not a directory")
            return


# One module per subcommand, in help order; each exposes `register(app)`. Only working commands
# are listed.
COMMANDS: list[str] = [
    "watch",
    "pressure",
    "cascade",
    "map",
    "fetch",
    "liquidations",
    "data",
    "paper",
    "backtest",
    "mm",
]


def _build_command(name: str) -> Command:
    """The click command of ``liqcli.cli.<name>``, built as the root app would build it."""
    holder = typer.Typer(add_completion=False)
    import_module(f"liqcli.cli.{name}").register(holder)
    (info,) = holder.registered_commands
    command = typer.main.get_command_from_info(
        info,
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode,
    )
    tidy_placeholders(command)
    quick_coercion(command)
    return command


# Value placeholders by option name, where a command did not give one: the help reads
# ``--start WHEN``, ``--input FILE``, not typer's ``<str>`` / ``<list[Path]>``.
PLACEHOLDERS: dict[str, str] = {
    "start": "WHEN",
    "end": "WHEN",
    "since": "DURATION",
    "window": "DURATION",
    "period": "PERIOD",
    "data_dir": "PATH",
    "out": "DIR",
    "inputs": "FILE",
    "replay": "FILE",
    "chart": "FILE",
    "duration": "SECONDS",
    "refresh": "SECONDS",
    "tiers": "LIST",
    "weights": "LIST",
    "mmr": "RATE",
    "bin_size": "PRICE",
    "log_level": "LEVEL",
    "dataset": "NAME",
    "symbol": "SYMBOL",
    "exchange": "VENUE",
}


def tidy_placeholders(command: Any) -> None:
    """One placeholder style in every help text: ``SYMBOL...`` for arguments, ``WHEN`` /
    ``FILE`` / ``N`` / ``[a|b]`` for option values (typer's defaults mix ``{symbol}``,
    ``<str>`` and ``<list[Path]>``)."""
    for param in command.params:
        if param.param_type_name == "argument":
            param.metavar = param.metavar or param.name.upper()
            # The Arguments section: "SYMBOL  help", without typer's "<list[str]>".
            param.display_type_rich = lambda ctx: None
            continue
        if param.metavar is not None:
            continue
        desc = getattr(param, "type_descriptor", None)
        if getattr(param, "is_flag", False) or desc is None:
            continue
        if desc.is_choice and desc.choices:
            values = [str(getattr(c, "value", c)) for c in desc.choices]
            param.metavar = "[" + "|".join(values) + "]"
        elif param.name in PLACEHOLDERS:
            param.metavar = PLACEHOLDERS[param.name]
        elif desc.is_path:
            param.metavar = "PATH"
        else:
            base = desc.annotation
            inner = typing.get_args(base)[0] if typing.get_origin(base) is list else base
            param.metavar = "N" if inner in (int, float) else "TEXT"
    usage = command.collect_usage_pieces

    def collect_usage_pieces(ctx: Any) -> list[str]:
        # typer wraps required arguments in braces ({SYMBOL}): plain SYMBOL, like click.
        return [re.sub(r"\{([^{}]+)\}", r"\1", piece) for piece in usage(ctx)]

    command.collect_usage_pieces = collect_usage_pieces


_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_SLOW = object()


def _quick_value(annotation: Any, info: Any, value: Any, param: Any, ctx: Any) -> Any:
    """What typer's pydantic adapter returns for the plain cases (a str, a decimal int or
    float, a list of str, an enum choice, a Path), else ``_SLOW``."""
    if info.parser is not None:
        return _SLOW
    kind = type(value)
    if annotation is str:
        return value if kind is str else _SLOW
    if annotation is int or annotation is float:
        if info.min is not None or info.max is not None or info.clamp:
            return _SLOW
        if kind is str:
            if _INT.fullmatch(value):
                return annotation(value)
            return float(value) if annotation is float and _FLOAT.fullmatch(value) else _SLOW
        if kind is int:
            return annotation(value)
        return value if kind is float and annotation is float else _SLOW
    if typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,):
        plain = isinstance(value, list | tuple) and all(type(v) is str for v in value)
        return list(value) if plain else _SLOW
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        case = info.case_sensitive
        return coerce_cli_choice(value, choices=list(annotation), case_sensitive=case, ctx=ctx)
    if isinstance(annotation, type) and issubclass(annotation, Path):
        path_type = info.path_type or annotation
        if path_type is Path and type(value) is str and value:
            value = Path(value)  # what its pydantic TypeAdapter(Path) makes of a string
        return coerce_cli_path(value, info, path_type=path_type, param=param, ctx=ctx)
    return _SLOW


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class QuickCoercion(RuntimeParam):
        """typer converts every option value through a pydantic TypeAdapter, and importing
        pydantic costs ~90 ms of CPU at each start of liq. The plain cases are converted here
        with the same result (the helpers typer's adapters wrap, or int()/float() on strings
        whose parse pydantic agrees with); anything else, and any failure, goes to typer's own
        adapter, built then, so its errors read exactly as before."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                out = _quick_value(self.annotation, self.parameter_info, value, param, ctx)
            except Exception:
                out = _SLOW
            if out is not _SLOW:
                return out
            real = build_runtime_param(param.type_descriptor)
            param._runtime_param = real
            return real._coerce_value(value, param=param, ctx=ctx)


def quick_coercion(command: Any) -> None:
    """Let ``command``'s options (and its --help, made on demand) convert their values without
    importing pydantic."""
    if RuntimeParam is None:
        return
    for param in command.params:
        _quick_param(param)
    help_option = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = help_option(ctx)
        _quick_param(option)
        return option

    command.get_help_option = get_help_option


def _quick_param(param: Any) -> None:
    desc = getattr(param, "type_descriptor", None)
    if (
        isinstance(param, _TyperParameter)
        and param._runtime_param is None
        and desc is not None
        and desc.file_annotation is None
    ):
        param._runtime_param = QuickCoercion(
            parameter_info=desc.parameter_info, annotation=desc.annotation
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
        tidy_placeholders(self)
        quick_coercion(self)
        self.commands = LazyCommands(COMMANDS)
        for name, command in (commands or {}).items():
            self.commands[name] = command


app = typer.Typer(
    name="liq",
    cls=LiqRootGroup,
    help=(
        "Command-line toolkit for crypto-derivatives traders: live liquidations, cascades, "
        "liquidation maps, pressure scores, Binance futures metrics, paper trading, backtests "
        "and market making.\n\n"
        "\b\nExamples:\n"
        "  liq watch BTCUSDT                      # live liquidations: Binance, OKX, Bybit\n"
        "  liq fetch BTCUSDT ETHUSDT --since 7d   # store Binance futures metrics\n"
        "  liq --data-dir /srv/liq fetch BTCUSDT --quiet   # from cron\n"
        "  liq paper BTCUSDT                      # the order-flow modes compete live\n"
        "  liq backtest sma_cross BTCUSDT --start 90d      # strategies over stored history\n"
        "  liq COMMAND --help                     # every command has examples"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


class _Lower(logging.Formatter):
    """``liq: warning: ...``: the same style as the CLI's own ``liq: error: ...`` lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        lowered = logging.makeLogRecord({**record.__dict__, "levelname": record.levelname.lower()})
        return super().formatMessage(lowered)


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
    root_logger = logging.getLogger()
    if not root_logger.handlers:  # what logging.basicConfig does, with our formatter
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Lower("liq: %(levelname)s: %(message)s"))
        root_logger.addHandler(handler)
        root_logger.setLevel(level)
    logging.getLogger("liq").setLevel(level)
    data_dir = (data_dir or default_data_dir()).expanduser()
    check_data_dir(data_dir)
    ctx.obj = AppState(data_dir=data_dir, log_level=log_level)


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
