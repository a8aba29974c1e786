"""Backpack signing reproduces TRADING-VENUES.md §1.8's vectors exactly."""

from __future__ import annotations

import pytest

from liqcli.errors import UsageError
from liqcli.exchanges.backpack.auth import (
    BackpackSigner,
    batch_signing_string,
    signing_string,
    verify,
)

SECRET = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDutoNWrf2A="
KEY = "0DLvVPXWQIJJuz56ixmwNeij5dKrY8Ws1MdtR3di9OI="
TS = 1735689600000

ORDER = {
    "symbol": "SOL_USDC_PERP",
    "side": "Bid",
    "orderType": "Limit",
    "price": "180.50",
    "quantity": "1.5",
    "postOnly": True,
    "timeInForce": "GTC",
    "clientId": 1001,
    "selfTradePrevention": "RejectTaker",
}


def test_order_execute_vector():
    message = signing_string("orderExecute", ORDER, TS, 5000)
    assert message == (
        "instruction=orderExecute&clientId=1001&orderType=Limit&postOnly=true&price=180.50"
        "&quantity=1.5&selfTradePrevention=RejectTaker&side=Bid&symbol=SOL_USDC_PERP"
        "&timeInForce=GTC&timestamp=1735689600000&window=5000"
    )
    signer = BackpackSigner(KEY, SECRET)
    assert signer.sign(message) == (
        "uRKVJch5jZQQ/+ZoeGl6ol5jWjzL/4TrpGhMnbSjOrr/U/2uHhsvhXoURaH1dchu/JwoSoSQmtIshsG2ZjIfBQ=="
    )
    headers = signer.headers("orderExecute", ORDER, TS)
    assert headers["X-Signature"] == signer.sign(message)
    assert headers == {
        "X-API-Key": KEY,
        "X-Signature": headers["X-Signature"],
        "X-Timestamp": str(TS),
        "X-Window": "5000",
    }


@pytest.mark.parametrize(
    ("instruction", "params", "signature"),
    [
        (
            "orderCancelAll",
            {"symbol": "SOL_USDC_PERP"},
            "IQKW9wW5GmHZRFCGCsSw8znnA/BtCr2l2FM6DfOrLcEZpVgulKZKsBSAZXqBSOWsayB8HJmUSg1YeR5V/7qFCQ==",
        ),
        (
            "balanceQuery",
            None,
            "LbtuKMiUPt66R0NWclQmzDARrF+e3okCHKu0xziDqMoPWpGd3hKooewwbV5E7z93g/vA+RXCye8EZJJ3c4XCAA==",
        ),
    ],
)
def test_other_vectors(instruction, params, signature):
    signer = BackpackSigner(KEY, SECRET)
    assert signer.headers(instruction, params, TS)["X-Signature"] == signature


def test_ws_subscribe_vector():
    signer = BackpackSigner(KEY, SECRET)
    assert signer.ws_signature(TS) == [
        KEY,
        "xtcCraGXFTTYAl93JzRbzEUQaGuG2I4pmWwlstVCQLDEdjMaZn1ORIYG7+xNE9P+1EobqyTs7MRn3J4AGQ5iDw==",
        str(TS),
        "5000",
    ]


def test_batch_vector_from_the_docs():
    items = [
        {
            "symbol": "SOL_USDC_PERP",
            "side": "Bid",
            "orderType": "Limit",
            "price": "141",
            "quantity": "12",
        },
        {
            "symbol": "SOL_USDC_PERP",
            "side": "Bid",
            "orderType": "Limit",
            "price": "140",
            "quantity": "11",
        },
    ]
    message = batch_signing_string("orderExecute", items, 1750793021519, 5000)
    assert message == (
        "instruction=orderExecute&orderType=Limit&price=141&quantity=12&side=Bid&symbol=SOL_USDC_PERP"
        "&instruction=orderExecute&orderType=Limit&price=140&quantity=11&side=Bid&symbol=SOL_USDC_PERP"
        "&timestamp=1750793021519&window=5000"
    )
    signer = BackpackSigner(KEY, SECRET)
    sig = signer.batch_headers("orderExecute", items, 1750793021519)["X-Signature"]
    assert sig == (
        "xBRN+x9tU353jIFeP4vKjBa75EayVBSyHAsjwN0cXfaaD6JzKijM5jNZL+N3/rWzCR4Gs1HrRJqPTbcfod67Cg=="
    )
    assert verify(KEY, message, sig)
    assert not verify(KEY, message.replace("141", "142"), sig)


def test_uppercase_booleans_would_sign_a_different_string():
    assert "postOnly=true" in signing_string("orderExecute", {"postOnly": True}, 1, 5000)
    wrong = signing_string("orderExecute", {"postOnly": "True"}, 1, 5000)
    signer = BackpackSigner(KEY, SECRET)
    right = signing_string("orderExecute", {"postOnly": True}, 1, 5000)
    assert not verify(KEY, right, signer.sign(wrong))


def test_bad_keys_are_clear_and_never_echo_the_secret():
    with pytest.raises(UsageError, match="LIQ_BACKPACK_API_KEY and LIQ_BACKPACK_API_SECRET"):
        BackpackSigner("", "")
    with pytest.raises(UsageError, match="not valid base64") as info:
        BackpackSigner(KEY, "not base64!!")
    assert "not base64!!" not in str(info.value)
    with pytest.raises(UsageError, match="does not match"):
        BackpackSigner("AAAA" + KEY[4:], SECRET)
    assert SECRET not in repr(BackpackSigner(KEY, SECRET))
