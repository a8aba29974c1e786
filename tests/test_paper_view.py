"""The ``liq paper`` dashboard at 80x24 and wide: the book's levels, the feature panel
(OBI, velocity, signed volume, VPIN, microprice, ATR), the leaderboard and positions."""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console

from liqcli.core.events import AggTrade, BookSnapshot
from liqcli.render.paper_view import render_paper
from liqcli.services import paper as svc

SYM = "BTCUSDT"
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC


def screen(session, width: int, height: int) -> list[str]:
    console = Console(width=width, height=height, record=True, color_system=None)
    console.begin_capture()
    console.print(render_paper(session, status="live"))
    return console.end_capture().splitlines()


def btc_session() -> svc.PaperSession:
    session = svc.PaperSession(svc.PaperConfig(symbol=SYM, session="night1", modes=("0", "1")))
    bids = tuple((60_000.0 - 0.1 * k, 1.0 + k) for k in range(20))
    asks = tuple((60_000.1 + 0.1 * k, 0.5 + k) for k in range(20))
    session.step(BookSnapshot("binance", SYM, T0 + 1_000, 7, bids, asks))
    session.step(AggTrade("binance", SYM, 1, T0 + 61_500, 60_000.1, 0.25, False))
    return session


def test_the_book_levels_and_every_feature_fit_80_by_24():
    lines = screen(btc_session(), 80, 24)
    text = "\n".join(lines)
    assert len(lines) <= 24 and all(cell_len(line) <= 80 for line in lines)
    assert "…" not in text  # levels that do not fit are left out, not cut
    assert lines[0].startswith("liq paper  night1  events 2  00:01:01 UTC  live")
    asks = next(line for line in lines if line.startswith("asks "))
    bids = next(line for line in lines if line.startswith("bids "))
    assert asks.split("  ")[1:4] == ["60000.1 x 0.50", "60000.2 x 1.50", "60000.3 x 2.50"]
    assert bids.split("  ")[1:4] == ["60000 x 1.00", "59999.9 x 2.00", "59999.8 x 3.00"]
    assert "spread 0.02 bps depth 1.50 BTC" in text  # 0.1 / 60,000.05; 1.0 + 0.5 at the top
    # microprice: the ask weighted by the bid size, (60000.1 * 1.0 + 60000 * 0.5) / 1.5
    assert "micro 60000.1" in text and "OBI " in text and "SV +0.2" in text


def test_wide_screens_show_the_positions_on_the_board_and_the_full_book():
    session = btc_session()
    wide = screen(session, 200, 40)
    assert (
        "position (entry, liquidation)" in wide[next(i for i, s in enumerate(wide) if "mode" in s)]
    )
    bids = next(line for line in wide if line.startswith("bids "))
    assert len(bids.split("  ")) == 11  # ten levels


def test_five_modes_with_positions_and_blocks_still_fit_80_by_24():
    session = btc_session()
    rows = []
    for rank, mode in enumerate(("cascade", "0", "1", "2", "3"), 1):
        rows.append(
            {
                "mode": mode,
                "rank": rank,
                # a day's session: four-digit fees and trade counts, five-digit PnL
                "balance": 99_999.99,
                "equity": 98_765.43,
                "realized_pnl": -12_345.67,
                "unrealized_pnl": -10_234.56,
                "fees": 2_345.67,
                "funding": -123.45,
                "trades": 1234,
                "win_rate": 0.5,
                "leverage": 13.37,
                "position": {
                    "side": "short",
                    "qty": 1234.5678,
                    "entry_price": 61_234.5,
                    "liquidation_price": 64_321.9,
                },
                "blocks": 12_345,
                "last_block": "VPIN 0.91 > 0.7; spread 12.5 bps > 10; depth 0.42 < 3",
            }
        )
    session.leaderboard = lambda: rows  # the layout alone, at its fullest
    lines = screen(session, 80, 24)
    assert len(lines) <= 24 and all(cell_len(line) <= 80 for line in lines)
    assert "…" not in "\n".join(lines)
    assert sum(" S 1235 entry 61234.5 liq 64321.9" in line for line in lines) == 5
    # balances and equity to the cent; the other sums shortened, not cut
    assert lines[next(i for i, s in enumerate(lines) if s.split()[:1] == ["mode"]) + 1].split() == [
        "🥇", "cascade", "98,765.43", "99,999.99", "-12.35k", "-10.23k", "2.35k", "-123.45",
        "1234", "50%", "13.37x",
    ]  # fmt: skip


def test_a_quiet_detector_shows_no_stale_call():
    session = svc.PaperSession(svc.PaperConfig(symbol=SYM, session="night1"))
    cascade = session.modes["cascade"]
    state = {
        "level": "MINOR",
        "direction": "long_liquidation",
        "phase": "late",
        "total_usd_60s": 1_200_000.0,
        "recommended_action": "prepare_long_reversal",
    }
    cascade.last_state = state
    text = "\n".join(screen(session, 80, 24))
    assert "cascade MINOR long liquidation late $1.20M/60s -> prepare_long_reversal" in text
    cascade.last_state = state | {"level": "QUIET", "total_usd_60s": 0.0}
    text = "\n".join(screen(session, 80, 24))
    assert "cascade QUIET $0.00/60s: no cascade now" in text
    assert "prepare_long_reversal" not in text


def test_working_entries_and_blocks_of_five_modes_never_pass_24_lines():
    """The fullest 80x24 case: five positions, five post-only entries working and five modes
    blocked; the block lines give way (summed up in one line), nothing else does."""
    from types import SimpleNamespace

    session = btc_session()
    rows = [
        {
            "mode": mode, "rank": rank, "balance": 10_000.0, "equity": 10_000.0,
            "realized_pnl": 0.0, "unrealized_pnl": 0.0, "fees": 0.0, "funding": 0.0,
            "trades": 1, "win_rate": None, "leverage": 5.0,
            "position": {"side": "long", "qty": 0.1, "entry_price": 60_000.0,
                         "liquidation_price": 54_000.0},
            "blocks": 3, "last_block": f"VPIN 0.9{rank} > 0.7",
        }
        for rank, mode in enumerate(("cascade", "0", "1", "2", "3"), 1)
    ]  # fmt: skip
    session.leaderboard = lambda: rows
    order = SimpleNamespace(
        is_open=True, side=SimpleNamespace(value="buy"), remaining=0.1, price=59_990.0,
        filled_qty=0.0,
    )  # fmt: skip
    session.modes = {r["mode"]: SimpleNamespace(working=SimpleNamespace(order=order)) for r in rows}
    for height in (24, 27, 40):  # 22 lines before the blocks
        lines = screen(session, 80, height)
        assert len(lines) <= height and all(cell_len(line) <= 80 for line in lines), lines
        assert sum("working: post-only buy" in line for line in lines) == 5
        assert sum(" L 0.1 entry 60000 liq 54000" in line for line in lines) == 5
        shown = [line for line in lines if " blocked: VPIN" in line]
        summary = [line for line in lines if "more blocked:" in line]
        if height >= 27:
            assert len(shown) == 5 and not summary
        else:
            assert len(shown) == 1 and summary[0].startswith("4 more blocked: 0, 1, 2, 3"), lines
