"""Unit tests of the channel bookkeeping: requests matched by id, timeouts, resubscription with
``since`` and gap reports, against a scripted ``palisade.v1`` server in this process (the
integration tests run the same against the real binary)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

import palisade_client
from palisade_client import ChannelError, Gap, StreamPosition

FAST: dict[str, Any] = {"backoff_base": 0.01, "backoff_cap": 0.02}


class Conn:
    """One client connection; the test plays the server."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.done = asyncio.get_running_loop().create_future()

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))  # type: ignore[no-any-return]

    async def send(self, env: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(env))

    def drop(self) -> None:
        """A lost connection: no close frame (1006 for the client)."""
        assert self.ws.transport is not None
        self.ws.transport.abort()
        if not self.done.done():
            self.done.set_result(None)


class Scripted:
    def __init__(self) -> None:
        self.conns: asyncio.Queue[Conn] = asyncio.Queue()

    async def handler(self, ws: ServerConnection) -> None:
        conn = Conn(ws)
        await self.conns.put(conn)
        await asyncio.wait([conn.done, asyncio.ensure_future(ws.wait_closed())], return_when=asyncio.FIRST_COMPLETED)

    async def accept(self) -> Conn:
        """The next connection, authenticated."""
        conn = await asyncio.wait_for(self.conns.get(), 5)
        assert (await conn.recv())["type"] == "auth"
        await conn.send({"type": "authenticated", "session_id": "ab", "user_id": "42", "exp": None})
        return conn


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, str]]:
    s = Scripted()
    async with serve(s.handler, "127.0.0.1", 0, subprotocols=["palisade.v1"]) as server:  # type: ignore[list-item]
        port = next(iter(server.sockets)).getsockname()[1]
        yield s, f"ws://127.0.0.1:{port}/"


async def started(url: str, s: Scripted, **options: Any) -> tuple[palisade_client.PalisadeClient, Conn]:
    c = palisade_client.connect(url, token_provider=lambda: "tok", **FAST, **options)
    task = asyncio.create_task(c.start())
    conn = await s.accept()
    await task
    return c, conn


async def subscribed(conn: Conn, channel: str, epoch: str, offset: int, recovered: bool = False,
                     publications: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    req = await conn.recv()
    assert req["type"] == "subscribe" and req["channel"] == channel, req
    await conn.send({"type": "subscribed", "id": req["id"], "channel": channel, "epoch": epoch,
                     "offset": offset, "recovered": recovered, "publications": publications or []})
    return req


def pub(channel: str, offset: int, data: Any = None) -> dict[str, Any]:
    return {"type": "publication", "channel": channel, "offset": offset, "data": data if data is not None else offset}


async def test_requests_resolve_by_id_and_refusals_are_typed(scripted) -> None:
    s, url = scripted
    c, conn = await started(url, s)
    a = asyncio.create_task(c.publish("chat:1", {"n": 1}))
    b = asyncio.create_task(c.publish("chat:1", {"n": 2}))
    who = asyncio.create_task(c.presence("chat:1"))
    hist = asyncio.create_task(c.history("chat:1", limit=2))
    reqs = {}
    for _ in range(4):
        r = await conn.recv()
        reqs[r["type"] + str(r.get("data", ""))] = r
    pa, pb = reqs["publish{'n': 1}"], reqs["publish{'n': 2}"]
    assert pa["id"] != pb["id"] and reqs["history"]["limit"] == 2
    # Out of order, each to its id.
    await conn.send({"type": "history", "id": reqs["history"]["id"], "channel": "chat:1", "epoch": "e",
                     "publications": [{**pub("chat:1", 4, "x"), "info": {"user_id": "7"}}]})
    await conn.send({"type": "ok", "id": pb["id"], "offset": 12})
    await conn.send({"type": "presence", "id": reqs["presence"]["id"], "channel": "chat:1",
                     "users": [{"user_id": "42", "sessions": 2}]})
    await conn.send({"type": "ok", "id": pa["id"], "offset": 11})
    assert (await a, await b) == (11, 12)
    assert await who == [palisade_client.PresenceUser("42", 2)]
    h = await hist
    assert h.epoch == "e" and h.publications == [palisade_client.Publication("chat:1", 4, "x", "7")]
    # A refusal rejects that request only; no connection error; still open.
    denied = asyncio.create_task(c.publish("news", 1))
    req = await conn.recv()
    await conn.send({"type": "error", "id": req["id"], "reason": "permission_denied", "detail": "no grant"})
    with pytest.raises(ChannelError) as info:
        await denied
    assert (info.value.reason, info.value.channel, info.value.detail) == ("permission_denied", "news", "no grant")
    assert isinstance(info.value, palisade_client.PalisadeError)
    assert c.errors == [] and c.state == "open"
    await c.close()


async def test_timeouts_lost_connections_and_disconnected_requests(scripted) -> None:
    s, url = scripted
    c, conn = await started(url, s, request_timeout=0.05)
    with pytest.raises(ChannelError) as info:
        await c.publish("chat:1", "late")
    assert info.value.reason == "timeout"
    late = await conn.recv()
    await conn.send({"type": "ok", "id": late["id"], "offset": 1})  # Nobody waits: ignored.
    with pytest.raises(ChannelError, match="timeout"):
        await c.presence("chat:1", timeout=0.01)
    await conn.recv()
    # In flight when the connection drops: connection_lost.
    lost = asyncio.create_task(c.publish("chat:1", "lost", timeout=5))
    await conn.recv()
    conn.drop()
    with pytest.raises(ChannelError) as info:
        await lost
    assert info.value.reason == "connection_lost"
    # Disconnected, no queue: not_connected at once.
    while c.state == "open":
        await asyncio.sleep(0.001)
    with pytest.raises(ChannelError) as info:
        await c.publish("chat:1", 1)
    assert info.value.reason == "not_connected"
    await c.close()
    with pytest.raises(ChannelError, match="closed"):
        await c.publish("chat:1", 1)
    with pytest.raises(ChannelError, match="closed"):
        await c.subscribe("chat:1")


async def test_queued_requests_go_after_the_resubscriptions(scripted) -> None:
    s, url = scripted
    c, conn = await started(url, s, queue_size=3, auth_timeout=2)
    sub_task = asyncio.create_task(c.subscribe("chat:1"))
    await subscribed(conn, "chat:1", "E", 0)
    await sub_task
    conn.drop()
    await asyncio.sleep(0)
    while c.state == "open":
        await asyncio.sleep(0.001)
    await c.send("m")
    queued = asyncio.create_task(c.publish("chat:1", "q"))
    await asyncio.sleep(0.001)
    conn = await s.accept()
    kinds = [(await conn.recv())["type"] for _ in range(3)]
    assert kinds == ["subscribe", "message", "publish"]
    await c.close()
    with pytest.raises(ChannelError):
        await queued


async def test_a_subscription_recovers_with_since_and_reports_gaps(scripted) -> None:
    s, url = scripted
    c, conn = await started(url, s)
    gaps: list[Gap] = []
    infos: list[palisade_client.SubscribedInfo] = []
    task = asyncio.create_task(c.subscribe("chat:1", on_gap=gaps.append, on_subscribed=infos.append))
    req = await subscribed(conn, "chat:1", "E", 3)
    assert "since" not in req
    sub = await task
    assert sub.state == "subscribed" and infos[0].resubscribed is False
    with pytest.raises(ChannelError, match="already_subscribed"):
        await c.subscribe("chat:1")
    for offset in (4, 5, 5):
        await conn.send(pub("chat:1", offset))
    await conn.send(pub("chat:other", 6))
    assert [(await asyncio.wait_for(sub.recv(), 5)).offset for _ in range(2)] == [4, 5]
    assert sub.since == StreamPosition("E", 5)

    # A drop: resubscribe from the last offset seen; recovered ones first, each once.
    conn.drop()
    conn = await s.accept()
    req = await subscribed(conn, "chat:1", "E", 7, True, [pub("chat:1", 5), pub("chat:1", 6), pub("chat:1", 7)])
    assert req["since"] == {"epoch": "E", "offset": 5}
    assert [(await asyncio.wait_for(sub.recv(), 5)).offset for _ in range(2)] == [6, 7]
    assert gaps == [] and infos[-1].recovered and infos[-1].resubscribed

    # A restart: another epoch, not recovered: a gap and the new position.
    await conn.ws.close(1012)
    conn = await s.accept()
    req = await subscribed(conn, "chat:1", "F", 0, False)
    assert req["since"] == {"epoch": "E", "offset": 7}
    await conn.send(pub("chat:1", 1, "new"))
    p = await asyncio.wait_for(sub.recv(), 5)
    assert (p.offset, p.data) == (1, "new")
    assert gaps == [Gap("chat:1", StreamPosition("E", 7), StreamPosition("F", 0))]
    assert sub.gaps == gaps
    await c.close()
    with pytest.raises(StopAsyncIteration):
        await sub.recv()
    assert sub.unsubscribed_reason == "closed"


async def test_refusals_server_ends_and_unsubscribe(scripted) -> None:
    s, url = scripted
    c, conn = await started(url, s, request_timeout=0.1)
    task = asyncio.create_task(c.subscribe("secret"))
    req = await conn.recv()
    await conn.send({"type": "error", "id": req["id"], "reason": "permission_denied", "detail": "no"})
    with pytest.raises(ChannelError) as info:
        await task
    assert (info.value.reason, info.value.channel) == ("permission_denied", "secret")
    assert c.subscription("secret") is None and c.errors == []

    # No reply: timeout, and the client tells the server it gives up.
    with pytest.raises(ChannelError, match="timeout"):
        await c.subscribe("chat:silent")
    await conn.recv()  # The subscribe.
    assert (await conn.recv())["type"] == "unsubscribe"

    # The server ends a subscription: iteration raises with the reason.
    ended: list[str] = []
    task = asyncio.create_task(c.subscribe("chat:1", on_unsubscribed=ended.append))
    await subscribed(conn, "chat:1", "E", 0)
    sub = await task
    await conn.send({"type": "unsubscribed", "channel": "chat:1", "reason": "permission_revoked"})
    with pytest.raises(ChannelError) as info:
        async for _ in sub:
            pass
    assert info.value.reason == "permission_revoked" and ended == ["permission_revoked"]

    # unsubscribe(): resolved by the unsubscribed with its id; in-flight publications dropped.
    got: list[Any] = []
    task = asyncio.create_task(c.subscribe("chat:2", on_publication=got.append))
    await subscribed(conn, "chat:2", "E", 0)
    sub = await task
    done = asyncio.create_task(sub.unsubscribe())
    req = await conn.recv()
    assert (req["type"], req["channel"]) == ("unsubscribe", "chat:2")
    await conn.send(pub("chat:2", 1))
    await conn.send({"type": "unsubscribed", "id": req["id"], "channel": "chat:2", "reason": "client"})
    await done
    assert got == [] and sub.state == "unsubscribed" and sub.unsubscribed_reason == "client"
    await c.close()
