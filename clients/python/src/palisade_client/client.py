"""The ``palisade.v1`` client: one logical connection that survives token expiry, restarts and
network loss."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random as _random
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Optional, Union

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .backoff import ADVICE, DEFAULT_BASE, DEFAULT_CAP, Advice, CloseInfo, Stop, decide
from .channels import (
    Gap,
    History,
    PresenceUser,
    Publication,
    StreamPosition,
    SubscribedInfo,
    Subscription,
    to_publication,
)
from .errors import (
    ChannelError,
    ClientClosed,
    NotConnected,
    PalisadeError,
    QueueFull,
    Refused,
    TokenProviderError,
)

PROTOCOL = "palisade.v1"
"""The subprotocol the client negotiates."""

log = logging.getLogger("palisade_client")

TokenReason = Literal["connect", "refresh", "after_refresh"]
TokenProvider = Union[
    Callable[[TokenReason], Union[str, Awaitable[str]]],
    Callable[[], Union[str, Awaitable[str]]],
]
State = Literal["connecting", "authenticating", "open", "reconnecting", "closed"]


@dataclass(frozen=True)
class Session:
    """The session the server started (``authenticated`` envelope)."""

    session_id: str
    user_id: str
    exp: Optional[int]


_END = object()

DEFAULT_REQUEST_TIMEOUT = 10.0
"""Seconds a channel request waits for its reply."""


@dataclass
class _Pending:
    """A channel request waiting for its reply (or, queued, for the connection)."""

    future: "asyncio.Future[dict[str, Any]]"
    channel: str
    expects: str
    sent: bool


class PalisadeClient:
    """Use :func:`connect`. ``async with connect(...) as c``, then ``await c.send(data)`` and
    ``async for data in c``. Iteration ends when :meth:`close` is called and raises
    :class:`Refused` when the server advised ``never``."""

    def __init__(
        self,
        url: str,
        token_provider: TokenProvider,
        *,
        backoff_base: float = DEFAULT_BASE,
        backoff_cap: float = DEFAULT_CAP,
        queue_size: int = 0,
        auth_timeout: float = 10.0,
        on_error: Optional[Callable[[PalisadeError], None]] = None,
        on_state: Optional[Callable[[State], None]] = None,
        random: Callable[[], float] = _random.random,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        **ws_options: Any,
    ) -> None:
        self.url = url
        self._provider = token_provider
        self._takes_reason = _takes_argument(token_provider)
        self._base, self._cap, self._random = backoff_base, backoff_cap, random
        self._queue_size = queue_size
        self._auth_timeout = auth_timeout
        self._on_error, self._on_state = on_error, on_state
        self._ws_options = ws_options
        self._state: State = "connecting"
        self._ws: Optional[ClientConnection] = None
        self._session: Optional[Session] = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        # Queued while disconnected: ("message", data) or ("request", id, envelope).
        self._outbox: list[tuple[Any, ...]] = []
        self._request_timeout = request_timeout
        self._subs: dict[str, Subscription] = {}
        self._subscribing: dict[int, Subscription] = {}
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._opened = asyncio.Event()
        self._fatal: Optional[PalisadeError] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._refreshes: set[asyncio.Task[None]] = set()
        self._closing = False
        self.errors: list[PalisadeError] = []
        """Every error reported, fatal or not (also passed to ``on_error``)."""

    # ---- public API ----

    @property
    def state(self) -> State:
        return self._state

    @property
    def session(self) -> Optional[Session]:
        """The current session while ``open``."""
        return self._session if self._state == "open" else None

    async def start(self) -> None:
        """Starts connecting and waits for the first authentication (raises :class:`Refused`
        if the server advises ``never`` first)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="palisade-client")
        opened = asyncio.create_task(self._opened.wait())
        await asyncio.wait({opened, self._task}, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        if self._fatal is not None and not self._opened.is_set():
            raise self._fatal

    async def wait_open(self, timeout: Optional[float] = None) -> None:
        """Waits until the client is ``open`` (after a reconnect, for example)."""
        async def wait() -> None:
            while self._state != "open":
                if self._state == "closed":
                    raise self._fatal or ClientClosed("closed", "the client is closed")
                await asyncio.sleep(0.01)

        await asyncio.wait_for(wait(), timeout)

    async def send(self, data: Any) -> None:
        """Sends ``data`` (any JSON value) in a ``message`` envelope; while not connected it is
        queued when ``queue_size`` allows, else this raises :class:`NotConnected` or
        :class:`QueueFull` (:class:`ClientClosed` after :meth:`close`, :class:`Refused` after
        a ``never``)."""
        ws = self._ws
        if self._state == "open" and ws is not None:
            try:
                await ws.send(_dumps({"type": "message", "data": data}))
                return
            except ConnectionClosed:
                pass  # Lost just now: queue it like any other send while disconnected.
        if self._state == "closed":
            raise self._fatal or ClientClosed("closed", "the client is closed")
        if self._queue_size <= 0:
            raise NotConnected("not_connected", "not connected (queue_size is 0)")
        if len(self._outbox) >= self._queue_size:
            raise QueueFull("queue_full", f"the send queue holds its {self._queue_size} messages")
        self._outbox.append(("message", data))

    # ---- channels ----

    async def subscribe(
        self,
        channel: str,
        *,
        on_publication: Optional[Callable[[Publication], None]] = None,
        on_gap: Optional[Callable[[Gap], None]] = None,
        on_subscribed: Optional[Callable[[SubscribedInfo], None]] = None,
        on_unsubscribed: Optional[Callable[[str], None]] = None,
        since: Optional[StreamPosition] = None,
        timeout: Optional[float] = None,
    ) -> Subscription:
        """Subscribes to ``channel`` and returns once the server confirmed it.

        Publications go to ``on_publication`` (a plain function) or, without it, to the
        subscription's async iterator. After every reconnect the client subscribes again with
        ``since`` (the last epoch and offset seen): what the server recovered arrives first, in
        order; when it could not recover (``recovered: false``: a restart, or more missed than
        its history holds) ``on_gap`` gets a :class:`Gap` (also kept in ``sub.gaps``).

        While disconnected the subscribe is sent after the next authentication; ``timeout``
        (default ``request_timeout``) bounds the wait for the reply once sent. Raises
        :class:`ChannelError` (``permission_denied``, ``bad_channel``,
        ``too_many_subscriptions``, ``timeout``, ``already_subscribed``, ``closed``).
        """
        if self._state == "closed":
            raise ChannelError("closed", channel, "the client is closed")
        if channel in self._subs:
            raise ChannelError("already_subscribed", channel, "this client already has a subscription to it")
        sub = Subscription(
            self, channel, on_publication=on_publication, on_gap=on_gap, on_subscribed=on_subscribed,
            on_unsubscribed=on_unsubscribed, since=since, timeout=timeout,
        )
        self._subs[channel] = sub
        ws = self._ws
        try:
            if self._state == "open" and ws is not None:
                await self._send_subscribe(ws, sub)
            await sub._ready
        except BaseException:
            # Refused, timed out or cancelled: nothing is left behind.
            if sub.state != "unsubscribed":
                self._forget(sub, "client")
                self._tell_unsubscribe(sub.channel)
            raise
        return sub

    def subscription(self, channel: str) -> Optional[Subscription]:
        """The subscription to ``channel``, if any."""
        return self._subs.get(channel)

    async def unsubscribe(self, channel: str, timeout: Optional[float] = None) -> None:
        """Ends the subscription to ``channel`` (no-op without one)."""
        sub = self._subs.get(channel)
        if sub is not None:
            await sub.unsubscribe(timeout)

    async def publish(self, channel: str, data: Any, *, timeout: Optional[float] = None) -> int:
        """Publishes ``data`` (any JSON value) to ``channel``; returns its offset. Raises
        :class:`ChannelError`: the server's reason (``permission_denied``, ...), ``timeout``,
        ``connection_lost`` (it may or may not have been published), ``not_connected`` or
        ``queue_full`` (see ``queue_size``), ``closed``."""
        env = await self._request("publish", channel, {"data": data}, "ok", timeout)
        offset = env.get("offset")
        return offset if isinstance(offset, int) else 0

    async def presence(self, channel: str, *, timeout: Optional[float] = None) -> list[PresenceUser]:
        """The users subscribed to ``channel`` on the server, with their session counts."""
        env = await self._request("presence", channel, {}, "presence", timeout)
        users = env.get("users")
        return [
            PresenceUser(str(u.get("user_id")), int(u.get("sessions", 0)))
            for u in (users if isinstance(users, list) else [])
            if isinstance(u, dict)
        ]

    async def history(
        self, channel: str, *, limit: Optional[int] = None, timeout: Optional[float] = None
    ) -> History:
        """The last publications the server holds for ``channel``, oldest first
        (``unavailable`` when the server keeps no history)."""
        fields = {} if limit is None else {"limit": limit}
        env = await self._request("history", channel, fields, "history", timeout)
        pubs = env.get("publications")
        return History(
            channel,
            str(env.get("epoch")),
            [to_publication(channel, p) for p in (pubs if isinstance(pubs, list) else []) if isinstance(p, dict)],
        )

    async def recv(self) -> Any:
        """The next ``data`` from the server."""
        item = await self._inbox.get()
        if item is _END:
            self._inbox.put_nowait(_END)
            if self._fatal is not None:
                raise self._fatal
            raise StopAsyncIteration
        return item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        return await self.recv()

    async def close(self) -> None:
        """Closes the connection (1000) and stops reconnecting."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000, "client closed")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._refreshes):
            t.cancel()
        self._finish()

    async def __aenter__(self) -> "PalisadeClient":
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- internals ----

    def _set_state(self, state: State) -> None:
        if state != self._state:
            self._state = state
            if self._on_state:
                self._on_state(state)

    def _report(self, err: PalisadeError) -> None:
        self.errors.append(err)
        log.warning("palisade: %s", err)
        if self._on_error:
            self._on_error(err)

    def _finish(self) -> None:
        if self._state != "closed":
            self._outbox.clear()
            self._set_state("closed")
            self._inbox.put_nowait(_END)
            self._fail_channels()

    async def _token(self, reason: TokenReason) -> str:
        value = self._provider(reason) if self._takes_reason else self._provider()  # type: ignore[call-arg]
        if inspect.isawaitable(value):
            value = await value
        return str(value)

    async def _run(self) -> None:
        attempt = 0
        reason: TokenReason = "connect"
        while not self._closing:
            self._set_state("connecting")
            try:
                token = await self._token(reason)
            except Exception as e:  # The provider's failure is the application's to see.
                self._report(TokenProviderError("token_provider_failed", repr(e)))
                close, authenticated = CloseInfo(1006, "backoff"), False
            else:
                close, authenticated = await self._connection(token)
            if self._closing:
                break
            if authenticated:
                attempt = 0
            decision = decide(close, attempt, self._base, self._cap, self._random)
            if isinstance(decision, Stop):
                last = self._last_error
                self._fatal = Refused(
                    last.reason if last else "connection_lost",
                    last.detail if last else f"closed with {close.code}",
                    reconnect="never",
                    code=close.code,
                )
                self._report(self._fatal)
                self._finish()
                return
            if self._last_error is not None:
                self._report(self._last_error)
            attempt += 1
            reason = "after_refresh" if decision.refresh_token else "connect"
            self._set_state("reconnecting")
            await asyncio.sleep(decision.delay)

    _last_error: Optional[PalisadeError] = None

    async def _connection(self, token: str) -> tuple[CloseInfo, bool]:
        """One connection, from the upgrade to its close: the close and whether it authenticated."""
        self._last_error = None
        authenticated = False
        try:
            async with ws_connect(
                self.url, subprotocols=[PROTOCOL], open_timeout=self._auth_timeout, **self._ws_options  # type: ignore[list-item]
            ) as ws:
                if ws.subprotocol != PROTOCOL:
                    self._last_error = PalisadeError(
                        "no_subprotocol", f"the server did not select {PROTOCOL}", reconnect="never"
                    )
                    return CloseInfo(1000, "never"), False
                self._ws = ws
                self._set_state("authenticating")
                await ws.send(_dumps({"type": "auth", "token": token}))
                try:
                    first = await asyncio.wait_for(ws.recv(), self._auth_timeout)
                except asyncio.TimeoutError:
                    self._last_error = PalisadeError("auth_timeout", "no authenticated in time", reconnect="backoff")
                    return CloseInfo(1006, "backoff"), False
                frames = _prepend(first, ws)
                async for raw in frames:
                    if self._frame(ws, raw):
                        authenticated = True
                        self._set_state("open")
                        self._opened.set()
                        for sub in list(self._subs.values()):
                            if sub.state == "subscribing" and sub._request_id is None:
                                await self._send_subscribe(ws, sub)
                        queued, self._outbox = self._outbox, []
                        for item in queued:
                            if item[0] == "message":
                                await ws.send(_dumps({"type": "message", "data": item[1]}))
                                continue
                            pending = self._pending.get(item[1])
                            if pending is None or pending.future.done():
                                continue  # Timed out while queued.
                            pending.sent = True
                            await ws.send(_dumps(item[2]))
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd is not None else 1006
            return self._close_info(code), authenticated
        except InvalidStatus as e:
            # Refused at the upgrade: 401 (bad header token) is final, 403 too; 429/503 back off.
            status = e.response.status_code
            retry = e.response.headers.get("Retry-After")
            retry_ms = int(retry) * 1000 if retry and retry.isdigit() else None
            advice: Advice = "backoff" if status in (429, 502, 503, 504) else "never"
            self._last_error = PalisadeError(
                "handshake_refused", f"HTTP {status}", reconnect=advice, retry_after_ms=retry_ms
            )
            return CloseInfo(1006, advice, retry_ms), False
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as e:
            self._last_error = None
            log.debug("palisade: connect failed: %r", e)
            return CloseInfo(1006), False
        finally:
            self._ws = None
            self._connection_lost()
        code = ws.close_code if ws.close_code is not None else 1006
        return self._close_info(code), authenticated

    def _close_info(self, code: int) -> CloseInfo:
        err = self._last_error
        if err is not None:
            err.code = code
        return CloseInfo(code, err.reconnect if err else None, err.retry_after_ms if err else None)

    def _frame(self, ws: ClientConnection, raw: Union[str, bytes]) -> bool:
        """Handles one frame; True for ``authenticated``."""
        if isinstance(raw, bytes):
            self._inbox.put_nowait(raw)  # Binary application data arrives unwrapped.
            return False
        try:
            env = json.loads(raw)
        except ValueError:
            self._report(PalisadeError("bad_frame", "the server sent a frame that is not JSON"))
            return False
        if not isinstance(env, dict):
            return False
        kind = env.get("type")
        if kind == "authenticated":
            exp = env.get("exp")
            self._session = Session(
                str(env.get("session_id")), str(env.get("user_id")), exp if isinstance(exp, int) else None
            )
            return True
        if kind == "message":
            self._inbox.put_nowait(env.get("data"))
        elif kind == "subscribed":
            sub = self._subs.get(str(env.get("channel")))
            if sub is not None and sub.state != "unsubscribed":
                if sub._request_id is not None:
                    self._subscribing.pop(sub._request_id, None)
                sub._subscribed(env)
        elif kind == "publication":
            sub = self._subs.get(str(env.get("channel")))
            if sub is not None:
                sub._publication(env)
        elif kind == "unsubscribed":
            rid = env.get("id")
            pending = self._pending.get(rid) if isinstance(rid, int) else None
            if pending is not None and pending.expects == "unsubscribed":
                self._reply(rid, env)  # type: ignore[arg-type]
            elif env.get("reason") != "client":
                # Ended by the server: permission_revoked, channel_closed.
                sub = self._subs.get(str(env.get("channel")))
                if sub is not None:
                    self._forget(sub, str(env.get("reason")))
        elif kind in ("ok", "presence", "history"):
            rid = env.get("id")
            if isinstance(rid, int):
                self._reply(rid, env)
        elif kind == "expiring":
            task = asyncio.create_task(self._refresh(ws))
            self._refreshes.add(task)
            task.add_done_callback(self._refreshes.discard)
        elif kind == "refreshed" and self._session is not None:
            exp = env.get("exp")
            self._session = Session(
                self._session.session_id, self._session.user_id, exp if isinstance(exp, int) else None
            )
        elif kind == "error":
            reconnect = env.get("reconnect")
            retry = env.get("retry_after_ms")
            err = PalisadeError(
                str(env.get("reason")),
                str(env.get("detail", "")),
                reconnect=reconnect if reconnect in ADVICE else None,
                retry_after_ms=retry if isinstance(retry, int) else None,
            )
            rid = env.get("id")
            answered = isinstance(rid, int) and self._refused(rid, err.reason, err.detail)
            if err.reconnect is not None:
                self._last_error = err  # A close follows; the supervisor decides.
            elif not answered:
                self._report(err)  # A refused refresh, a bad envelope: the session goes on.
        return False

    # ---- channel internals ----

    async def _send_subscribe(self, ws: ClientConnection, sub: Subscription) -> None:
        rid = self._next_id
        self._next_id += 1
        since = sub.since
        envelope: dict[str, Any] = {"type": "subscribe", "channel": sub.channel, "id": rid}
        if since is not None:
            envelope["since"] = {"epoch": since.epoch, "offset": since.offset}
        sub._request_id, sub._sent_since = rid, since
        self._subscribing[rid] = sub
        limit = sub.timeout if sub.timeout is not None else self._request_timeout
        sub._timer = asyncio.get_running_loop().call_later(limit, self._subscribe_timed_out, sub, rid, limit)
        try:
            await ws.send(_dumps(envelope))
        except ConnectionClosed:
            pass  # The reconnect sends it again.

    def _subscribe_timed_out(self, sub: Subscription, rid: int, limit: float) -> None:
        self._subscribing.pop(rid, None)
        sub._timer = None
        if sub._failed(ChannelError("timeout", sub.channel, f"no reply to subscribe within {limit} s")):
            self._forget(sub, "timeout")
            self._tell_unsubscribe(sub.channel)

    def _tell_unsubscribe(self, channel: str) -> None:
        """Tells the server, without waiting, that a subscription it may hold is not wanted."""
        ws = self._ws
        if self._state != "open" or ws is None:
            return
        rid = self._next_id
        self._next_id += 1
        task = asyncio.ensure_future(ws.send(_dumps({"type": "unsubscribe", "channel": channel, "id": rid})))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _forget(self, sub: Subscription, reason: str, error: Optional[PalisadeError] = None) -> None:
        """Ends ``sub`` locally (no message to the server)."""
        if sub._request_id is not None:
            self._subscribing.pop(sub._request_id, None)
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        sub._end(reason, error)

    async def _end_subscription(self, sub: Subscription, timeout: Optional[float]) -> None:
        if sub.state == "unsubscribed" or self._subs.get(sub.channel) is not sub:
            return
        self._forget(sub, "client")
        if self._state != "open" or self._ws is None:
            return  # The server forgot it with the connection.
        await self._request("unsubscribe", sub.channel, {}, "unsubscribed", timeout, queueable=False)

    async def _request(
        self,
        kind: str,
        channel: str,
        fields: dict[str, Any],
        expects: str,
        timeout: Optional[float],
        queueable: bool = True,
    ) -> dict[str, Any]:
        """Sends (or queues) a request; returns the reply of type ``expects``."""
        if self._state == "closed":
            raise ChannelError("closed", channel, "the client is closed")
        rid = self._next_id
        self._next_id += 1
        envelope = {"type": kind, "channel": channel, "id": rid, **fields}
        ws = self._ws
        is_open = self._state == "open" and ws is not None
        if not is_open:
            if not queueable or self._queue_size <= 0:
                raise ChannelError("not_connected", channel, "not connected (queue_size is 0)")
            if len(self._outbox) >= self._queue_size:
                raise ChannelError("queue_full", channel, f"the send queue holds its {self._queue_size} messages")
            self._outbox.append(("request", rid, envelope))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(future, channel, expects, sent=is_open)
        limit = timeout if timeout is not None else self._request_timeout
        try:
            if is_open:
                assert ws is not None
                try:
                    await ws.send(_dumps(envelope))
                except ConnectionClosed:
                    raise ChannelError("connection_lost", channel, "the connection closed") from None
            return await asyncio.wait_for(future, limit)
        except asyncio.TimeoutError:
            raise ChannelError("timeout", channel, f"no reply to {kind} within {limit} s") from None
        finally:
            self._pending.pop(rid, None)
            if future.done() and not future.cancelled():
                future.exception()  # Retrieved, even when the send failed first.

    def _reply(self, rid: int, env: dict[str, Any]) -> None:
        pending = self._pending.get(rid)
        if pending is None or pending.expects != env.get("type") or pending.future.done():
            return  # Late (timed out) or not ours.
        pending.future.set_result(env)

    def _refused(self, rid: int, reason: str, detail: str) -> bool:
        """An ``error`` with an ``id``; returns whether it answered one of our requests."""
        pending = self._pending.get(rid)
        if pending is not None:
            if not pending.future.done():
                pending.future.set_exception(ChannelError(reason, pending.channel, detail))
            return True
        sub = self._subscribing.pop(rid, None)
        if sub is not None:
            err = ChannelError(reason, sub.channel, detail)
            if sub._failed(err):
                self._forget(sub, reason, err)
            return True
        return False

    def _connection_lost(self) -> None:
        """Sent requests cannot be answered any more; subscriptions wait to resubscribe."""
        for pending in self._pending.values():
            if pending.sent and not pending.future.done():
                pending.future.set_exception(
                    ChannelError("connection_lost", pending.channel, "the connection closed before the reply")
                )
        self._subscribing.clear()
        for sub in self._subs.values():
            sub._disconnected()

    def _fail_channels(self) -> None:
        """The client is closed: every request fails, every subscription ends."""
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(ChannelError("closed", pending.channel, "the client is closed"))
        self._subscribing.clear()
        subs, self._subs = list(self._subs.values()), {}
        for sub in subs:
            sub._end("closed", self._fatal)

    async def _refresh(self, ws: ClientConnection) -> None:
        try:
            token = await self._token("refresh")
        except Exception as e:
            self._report(TokenProviderError("token_provider_failed", repr(e)))
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(_dumps({"type": "refresh", "token": token}))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def _prepend(first: Union[str, bytes], ws: ClientConnection) -> AsyncIterator[Union[str, bytes]]:
    yield first
    async for raw in ws:
        yield raw


def _takes_argument(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )


def connect(url: str, token_provider: TokenProvider, **options: Any) -> PalisadeClient:
    """A client for ``url`` (``ws://`` or ``wss://``), used as ``async with``.

    ``token_provider(reason)`` returns a JWT (or an awaitable of one); ``reason`` is
    ``"connect"``, ``"refresh"`` (the server sent ``expiring``) or ``"after_refresh"`` (the
    server closed with ``after_refresh``). A provider without parameters is fine too.

    Options: ``backoff_base`` (0.5 s), ``backoff_cap`` (30 s), ``queue_size`` (0: ``send``
    and channel requests while disconnected raise), ``auth_timeout`` (10 s),
    ``request_timeout`` (10 s, channel requests), ``on_error``, ``on_state``; other keyword
    arguments go to :func:`websockets.asyncio.client.connect`.
    """
    return PalisadeClient(url, token_provider, **options)
