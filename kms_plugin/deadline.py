"""The deadline of the gRPC call being served, for backends that wait on the network.

The gRPC adapter sets it from ``context.time_remaining()``; a remote backend bounds each remote
call by it, so a slow KMS makes the call fail in time instead of outliving the caller's deadline.
Outside a gRPC call (health probes, offline tools) there is none.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_DEADLINE: ContextVar[float | None] = ContextVar("kms_plugin_deadline", default=None)
# Leave the caller this much of its deadline to receive our error.
MARGIN = 0.1


def set_remaining(seconds: float | None) -> Token[float | None]:
    """Record a deadline ``seconds`` from now (None: no deadline); returns a reset token."""
    return _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)


def reset(token: Token[float | None]) -> None:
    _DEADLINE.reset(token)


def budget(limit: float) -> float:
    """Seconds a remote call may take: ``limit``, cut to the caller's deadline minus a margin."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return limit
    return max(0.0, min(limit, deadline - time.monotonic() - MARGIN))
