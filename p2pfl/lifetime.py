"""`async with obj:` for objects that own a nursery: they enter it with `async with`, never by hand.

A class defines `_lifetime()`, an `@asynccontextmanager` whose body opens the nursery, starts its
tasks and yields `self` inside `try:` / `finally:` (py-libp2p's `BasicHost.run` pattern). Whatever
raises or is cancelled, before or after the yield, the nursery's own `async with` closes it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any


class Lifetime:
    def _lifetime(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        self._lifetime_cm = self._lifetime()
        return await self._lifetime_cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._lifetime_cm.__aexit__(*exc)
