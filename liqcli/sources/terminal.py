"""The one rich ``Live`` set-up of the live commands (``liq watch``, ``liq cascade``).

On a terminal the view is redrawn on each ``refresh()`` (``screen=True``: full-screen, so a log
line on stderr is overwritten by the next frame instead of corrupting it); on anything that is
not a terminal nothing is drawn until ``close()``, which prints the final frame once, at
``width`` columns (a pipe or file gets the full table, not 80 columns).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO


class TerminalView:
    def __init__(
        self, render: Callable[[], Any], out: TextIO, *, screen: bool = False, width: int = 140
    ) -> None:
        from rich.console import Console
        from rich.live import Live

        self.render = render
        self.screen = screen
        self.console = Console(file=out)
        if not self.console.is_terminal:
            self.console = Console(file=out, width=width)
        self.live: Live | None = None
        if self.console.is_terminal:
            self.live = Live(
                render(),
                console=self.console,
                screen=screen,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.live.start()

    def refresh(self, _now: int | None = None) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)

    def close(self) -> None:
        """Stop redrawing and leave the final frame on the terminal (or in the pipe)."""
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
            self.live.stop()
            if not self.screen:
                return  # the last frame stays where it was drawn
        self.console.print(self.render())
