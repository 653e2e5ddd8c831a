from __future__ import annotations

import os
from typing import Any, Callable, Sequence


class Script:
    """An atomic operation with a Lua body for Redis and a Python twin for memory.

    `python(store, keys, args, now)` receives the MemoryStore, the keys, the
    args and the store's clock in seconds; it must do what the Lua does.
    Lua scripts may read the server clock with `redis.call('TIME')`.
    """

    __slots__ = ("name", "lua", "python")

    def __init__(self, name: str, lua: str, python: Callable[..., Any]):
        self.name = name
        self.lua = lua
        self.python = python

    @classmethod
    def from_file(cls, name: str, python: Callable[..., Any]) -> "Script":
        """Load `<name>.lua` from this package's directory."""
        with open(os.path.join(os.path.dirname(__file__), f"{name}.lua"), encoding="utf-8") as f:
            return cls(name, f.read(), python)


class Store:
    """The interface; see the package docstring."""

    kind = "abstract"

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        raise NotImplementedError

    async def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        raise NotImplementedError

    async def delete(self, *keys: str) -> int:
        raise NotImplementedError

    async def lock(self, key: str, ttl: float) -> str | None:
        """A token when the lease was taken, None when someone holds it."""
        raise NotImplementedError

    async def unlock(self, key: str, token: str) -> bool:
        raise NotImplementedError

    async def ping(self) -> bool:
        raise NotImplementedError

    async def close(self) -> None:
        pass
