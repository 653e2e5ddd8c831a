"""Example `merge` functions for aggregate routes (docs/aggregation.md), used by the tests.

A merge function receives the dict of answers, in the configured order: each
backend's parsed JSON under its name, a failed backend's `default` (or
nothing), and `_errors` when the answer is partial. It returns the body: a
dict or list (sent as JSON), or bytes/str sent as they are. It may be async.
"""


def profile_with_orders(answers: dict) -> dict:
    profile = answers.get("profile") or {}
    orders = answers.get("orders")
    return {"name": profile.get("path"), "order_count": 1 if orders else 0,
            "sources": [k for k in answers if not k.startswith("_")]}


def fails(answers: dict) -> dict:
    raise RuntimeError("this merge always fails")


async def profile_later(answers: dict) -> dict:
    """The same as profile_with_orders, as a coroutine (one that waits on something first)."""
    import asyncio

    await asyncio.sleep(0.01)
    return profile_with_orders(answers)


async def fails_later(answers: dict) -> dict:
    import asyncio

    await asyncio.sleep(0.01)
    raise RuntimeError("this merge always fails, later")
