"""Reconnect decisions: full-jitter exponential backoff and the server's advice (pure functions)."""

from __future__ import annotations

import random as _random
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

Advice = Literal["now", "backoff", "after_refresh", "never"]
ADVICE: tuple[str, ...] = ("now", "backoff", "after_refresh", "never")

DEFAULT_BASE = 0.5
"""The first delay's upper bound, in seconds."""
DEFAULT_CAP = 30.0
"""The largest delay, in seconds."""


def full_jitter(
    attempt: int,
    base: float = DEFAULT_BASE,
    cap: float = DEFAULT_CAP,
    random: Callable[[], float] = _random.random,
) -> float:
    """A uniformly random delay in [0, min(cap, base * 2**attempt)) seconds."""
    return random() * min(cap, base * 2 ** min(attempt, 30))


def advice_for_code(code: int) -> Advice:
    """The advice a close implies when no ``error`` envelope gave one."""
    return "backoff" if code in (1001, 1006, 1011, 1012, 1013) else "never"


@dataclass(frozen=True)
class CloseInfo:
    """What ended a connection: the close code (1006 without a close frame), the advice and
    ``retry_after_ms`` of the ``error`` envelope before it, if one came."""

    code: int
    advice: Optional[Advice] = None
    retry_after_ms: Optional[int] = None


@dataclass(frozen=True)
class Stop:
    """Do not reconnect."""


@dataclass(frozen=True)
class Retry:
    """Reconnect after ``delay`` seconds; ``refresh_token`` when the server said ``after_refresh``."""

    delay: float
    refresh_token: bool


Decision = Union[Stop, Retry]


def decide(
    close: CloseInfo,
    attempt: int,
    base: float = DEFAULT_BASE,
    cap: float = DEFAULT_CAP,
    random: Callable[[], float] = _random.random,
) -> Decision:
    """The decision after a close; ``attempt`` counts reconnects since the last authentication."""
    advice = close.advice or advice_for_code(close.code)
    if advice == "never":
        return Stop()
    floor = max(0, close.retry_after_ms or 0) / 1000
    immediate = advice in ("now", "after_refresh") and attempt == 0
    jitter = 0.0 if immediate else full_jitter(attempt, base, cap, random)
    return Retry(delay=max(floor, jitter), refresh_token=advice == "after_refresh")
