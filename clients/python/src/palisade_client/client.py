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
from .errors import (
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
        self._outbox: list[Any] = []
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
        self._outbox.append(data)

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
                        queued, self._outbox = self._outbox, []
                        for data in queued:
                            await ws.send(_dumps({"type": "message", "data": data}))
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
            if err.reconnect is not None:
                self._last_error = err  # A close follows; the supervisor decides.
            else:
                self._report(err)  # A refused refresh, a bad envelope: the session goes on.
        return False

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
    while disconnected raises), ``auth_timeout`` (10 s), ``on_error``, ``on_state``; other
    keyword arguments go to :func:`websockets.asyncio.client.connect`.
    """
    return PalisadeClient(url, token_provider, **options)
