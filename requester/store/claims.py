"""Exactly once across fleet hosts (docs/fleet.md sections 5 and 6): an enrollment runs under the
fleet store's claim on the appliance. The file store has no claim (one host; its flock and the
appliance's own one-time commit suffice): the enrollment runs as it always did."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

from firsttrust.errors import FirsttrustError, PeerRefused

from .errors import HeldByHost

T = TypeVar("T")


async def claimed(store: object, name: str, run: Callable[[], Awaitable[T]]) -> T:
    """`run()` under the store's claim on `name`, released on failure (kept by `promote` on success).

    Raises:
        HeldByHost: another host's live claim (nothing was sent); or the appliance answered
            `already_enrolled` after this host took over a dead host's pending enrollment: the
            appliance committed that host's key, which only that host holds.
    """
    claim = getattr(store, "claim", None)
    if claim is None:
        return await run()
    await asyncio.to_thread(claim, name)
    try:
        return await run()
    except BaseException as exc:
        taken_from = store.took_over_from(name)  # type: ignore[attr-defined]
        try:
            await asyncio.to_thread(store.release, name)  # type: ignore[attr-defined]
        except FirsttrustError:
            pass  # the lease expires on its own
        if taken_from and isinstance(exc, PeerRefused) and exc.code == "already_enrolled":
            raise HeldByHost(f"{name}: host {taken_from} sent finish and the appliance says it is enrolled: only "
                             f"{taken_from}'s key can confirm it; run the same enrollment on {taken_from} (then "
                             "`firsttrust fleet sync` authorizes the other hosts)", taken_from) from None
        raise
