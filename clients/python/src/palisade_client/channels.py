"""Channels (docs/subprotocol.md#channels): publications, replies, and the
:class:`Subscription` that :meth:`PalisadeClient.subscribe` returns.

A subscription keeps the position it has seen (``epoch``, ``offset``): after a reconnect the
client subscribes again with ``since``, delivers what the server recovered, and reports a
:class:`Gap` when it could not (``recovered: false``, e.g. a new epoch after a restart).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Optional

from .errors import ChannelError, PalisadeError

if TYPE_CHECKING:
    from .client import PalisadeClient

log = logging.getLogger("palisade_client")


@dataclass(frozen=True)
class StreamPosition:
    """A channel's position; offsets compare only within one epoch."""

    epoch: str
    offset: int


@dataclass(frozen=True)
class Publication:
    """One publication: ``offset`` is 1 for the first of its epoch, then +1 each. ``user_id``
    names the publisher (``None`` for the server's admin API)."""

    channel: str
    offset: int
    data: Any
    user_id: Optional[str] = None


@dataclass(frozen=True)
class SubscribedInfo:
    """A ``subscribed`` reply: the channel's position; ``recovered`` when ``since`` was sent and
    every publication after it was delivered; ``resubscribed`` after a reconnect."""

    channel: str
    epoch: str
    offset: int
    recovered: bool
    resubscribed: bool


@dataclass(frozen=True)
class Gap:
    """Publications may have been missed between ``previous`` (the last position seen) and
    ``current`` (where live publications continue): reload the channel's state another way."""

    channel: str
    previous: StreamPosition
    current: StreamPosition


@dataclass(frozen=True)
class PresenceUser:
    user_id: str
    sessions: int


@dataclass(frozen=True)
class History:
    """The publications the server holds for a channel, oldest first."""

    channel: str
    epoch: str
    publications: list[Publication]


def to_publication(channel: str, env: dict[str, Any]) -> Publication:
    info = env.get("info")
    user = info.get("user_id") if isinstance(info, dict) else None
    offset = env.get("offset")
    return Publication(
        channel=str(env.get("channel", channel)),
        offset=offset if isinstance(offset, int) else 0,
        data=env.get("data"),
        user_id=str(user) if user is not None else None,
    )


_END = object()


class Subscription:
    """A subscription to one channel, made by :meth:`PalisadeClient.subscribe`.

    Iterate it (``async for pub in sub``) unless ``on_publication`` was given. Iteration ends
    after :meth:`unsubscribe` or the client's ``close()``, and raises :class:`ChannelError`
    when the server ended the subscription (``permission_revoked``, ``channel_closed``, a
    refused resubscription) or :class:`Refused` when the client stopped. ``async with sub``
    unsubscribes on exit.
    """

    def __init__(
        self,
        client: "PalisadeClient",
        channel: str,
        *,
        on_publication: Optional[Callable[[Publication], None]] = None,
        on_gap: Optional[Callable[[Gap], None]] = None,
        on_subscribed: Optional[Callable[[SubscribedInfo], None]] = None,
        on_unsubscribed: Optional[Callable[[str], None]] = None,
        since: Optional[StreamPosition] = None,
        timeout: Optional[float] = None,
    ) -> None:
        self.channel = channel
        self._client = client
        self._on_publication, self._on_gap = on_publication, on_gap
        self._on_subscribed, self._on_unsubscribed = on_subscribed, on_unsubscribed
        self._position = since
        self.timeout = timeout
        self._state = "subscribing"
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._ready: asyncio.Future[SubscribedInfo] = asyncio.get_running_loop().create_future()
        self._ever = False
        self._error: Optional[PalisadeError] = None
        # The subscribe in flight: its id, the since it carried, its timer.
        self._request_id: Optional[int] = None
        self._sent_since: Optional[StreamPosition] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self.gaps: list[Gap] = []
        """Every gap reported (also passed to ``on_gap``)."""
        self.unsubscribed_reason: Optional[str] = None
        """Why the subscription ended: ``client``, ``closed``, ``permission_revoked``, ..."""

    @property
    def state(self) -> str:
        """``subscribing`` (also while waiting to resubscribe), ``subscribed`` or ``unsubscribed``."""
        return self._state

    @property
    def since(self) -> Optional[StreamPosition]:
        """The last position seen, sent as ``since`` when resubscribing."""
        return self._position

    async def unsubscribe(self, timeout: Optional[float] = None) -> None:
        """Ends the subscription; returns when the server confirms (at once when disconnected)."""
        await self._client._end_subscription(self, timeout)

    async def recv(self) -> Publication:
        """The next publication (only without ``on_publication``)."""
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[Publication]:
        return self

    async def __anext__(self) -> Publication:
        return await self.recv()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state != "unsubscribed" and self._client.state == "open":
            await self.unsubscribe()
        else:
            self._client._forget(self, "client")

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} {self._state} since={self._position}>"

    # ---- called by the client ----

    def _clear_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _disconnected(self) -> None:
        self._clear_timer()
        self._request_id = None
        if self._state == "subscribed":
            self._state = "subscribing"

    def _subscribed(self, env: dict[str, Any]) -> None:
        self._clear_timer()
        self._request_id = None
        sent, self._sent_since = self._sent_since, None
        epoch = str(env.get("epoch"))
        offset = env.get("offset") if isinstance(env.get("offset"), int) else 0
        assert isinstance(offset, int)
        recovered = env.get("recovered") is True
        previous = self._position
        resubscribed, self._ever = self._ever, True
        self._state = "subscribed"
        if recovered and previous is not None and previous.epoch == epoch:
            self._position = previous
        else:
            self._position = StreamPosition(epoch, offset)
        info = SubscribedInfo(self.channel, epoch, offset, recovered, resubscribed)
        if sent is not None and not recovered:
            gap = Gap(self.channel, sent, StreamPosition(epoch, offset))
            self.gaps.append(gap)
            log.info("palisade: %s: publications may have been missed (%s -> %s)", self.channel, sent, gap.current)
            self._call(self._on_gap, gap)
        self._call(self._on_subscribed, info)
        if not self._ready.done():
            self._ready.set_result(info)
        if recovered:
            for p in env.get("publications") or []:
                if isinstance(p, dict):
                    self._publication(p)
        if self._position is not None and self._position.offset < offset:
            self._position = StreamPosition(epoch, offset)

    def _publication(self, env: dict[str, Any]) -> None:
        offset = env.get("offset")
        if self._state != "subscribed" or not isinstance(offset, int):
            return
        if self._position is not None:
            if offset <= self._position.offset:
                return  # Seen already.
            self._position = StreamPosition(self._position.epoch, offset)
        pub = to_publication(self.channel, env)
        if self._on_publication is not None:
            self._call(self._on_publication, pub)
        else:
            self._queue.put_nowait(pub)

    def _failed(self, err: ChannelError) -> bool:
        """The subscribe was refused or timed out; returns whether the subscription ended."""
        self._clear_timer()
        self._request_id = None
        self._sent_since = None
        if not self._ready.done():
            self._ready.set_exception(err)
            self._state = "unsubscribed"
            self.unsubscribed_reason = err.reason
            self._queue.put_nowait(_END)
            return True
        self._client._report(err)
        if err.reason == "timeout":
            return False  # A late reply still counts; the next reconnect retries.
        self._end(err.reason, err)
        return True

    def _end(self, reason: str, error: Optional[PalisadeError] = None) -> None:
        if self._state == "unsubscribed":
            return
        self._clear_timer()
        self._state = "unsubscribed"
        self.unsubscribed_reason = reason
        if not self._ready.done():
            self._ready.set_exception(
                error or ChannelError("unsubscribed" if reason == "client" else reason, self.channel, f"ended ({reason}) before subscribed")
            )
        else:
            if reason not in ("client", "closed"):
                self._error = error or ChannelError(reason, self.channel, "the subscription ended")
            elif error is not None:
                self._error = error
            self._call(self._on_unsubscribed, reason)
        self._queue.put_nowait(_END)

    def _call(self, fn: Optional[Callable[[Any], None]], arg: Any) -> None:
        if fn is None:
            return
        try:
            fn(arg)
        except Exception:  # The application's bug must not break the connection.
            log.exception("palisade: a %s callback raised", self.channel)
