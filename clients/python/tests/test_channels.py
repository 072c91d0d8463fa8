"""Channels against the real ``palisade`` binary: subscribe and publish between two clients,
typed refusals, presence and history, a restart (new epoch: a gap is reported), and a dropped
connection recovered from the server's history (``recovered: true``, nothing missed)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

import pytest

import palisade_client
from palisade_client import ChannelError, Gap, Publication, StreamPosition, SubscribedInfo

from conftest import token

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.4}
ALL = ["subscribe", "publish", "presence", "history"]


def client(url: str, user: str, grants: dict[str, list[str]],
           gate: Optional[Callable[[], Awaitable[None]]] = None, **options: Any) -> palisade_client.PalisadeClient:
    async def provider() -> str:
        if gate is not None:
            await gate()
        return token(user, 600, channels=grants)

    return palisade_client.connect(url, token_provider=provider, **FAST, **options)


async def until(pred: Callable[[], bool], what: str, timeout: float = 10) -> None:
    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def take(sub: palisade_client.Subscription, n: int) -> list[Publication]:
    return [await asyncio.wait_for(sub.recv(), 10) for _ in range(n)]


async def test_two_clients_subscribe_and_publish_with_typed_refusals(start_server) -> None:
    server = start_server()
    async with client(server.url, "alice", {"chat:*": ALL}) as alice, \
            client(server.url, "bob", {"chat:*": ["subscribe", "publish"]}) as bob:
        a = await alice.subscribe("chat:room1")
        got_b: list[Publication] = []
        b = await bob.subscribe("chat:room1", on_publication=got_b.append)
        assert a.since is not None and a.since.offset == 0
        assert await bob.publish("chat:room1", {"text": "hi"}) == 1
        assert await alice.publish("chat:room1", [1, 2]) == 2
        expected = [
            Publication("chat:room1", 1, {"text": "hi"}, "bob"),
            Publication("chat:room1", 2, [1, 2], "alice"),
        ]
        assert await take(a, 2) == expected
        await until(lambda: len(got_b) == 2, "bob's publications")
        assert got_b == expected
        users = sorted(await alice.presence("chat:room1"), key=lambda u: u.user_id)
        assert users == [palisade_client.PresenceUser("alice", 1), palisade_client.PresenceUser("bob", 1)]

        # No grant: typed refusals; the connections go on.
        with pytest.raises(ChannelError) as info:
            await bob.publish("news", 1)
        assert info.value.reason == "permission_denied" and info.value.channel == "news"
        with pytest.raises(ChannelError, match="permission_denied"):
            await bob.presence("chat:room1")
        with pytest.raises(ChannelError) as info:
            await bob.subscribe("secret:x")
        assert info.value.reason == "permission_denied"
        with pytest.raises(ChannelError, match="bad_channel"):
            await alice.publish("bad channel", 1)
        with pytest.raises(ChannelError, match="unavailable"):
            await alice.history("chat:room1")  # This server keeps no history.
        assert bob.state == "open"

        await b.unsubscribe()
        assert b.state == "unsubscribed"
        await alice.publish("chat:room1", "after")
        assert (await take(a, 1))[0].data == "after"
        await asyncio.sleep(0.1)
        assert len(got_b) == 2


async def test_a_restart_restores_the_subscription_and_reports_the_gap(start_server) -> None:
    config = {"channels.history_size": "10"}
    first = start_server(config)
    port = first.secure.rsplit(":", 1)[1]
    gaps: list[Gap] = []
    infos: list[SubscribedInfo] = []
    async with client(first.url, "42", {"chat:*": ALL}) as c:
        sub = await c.subscribe("chat:e", on_gap=gaps.append, on_subscribed=infos.append)
        before = infos[0]
        await c.publish("chat:e", "before")
        assert (await take(sub, 1))[0].offset == 1
        first.stop()
        await until(lambda: sub.state == "subscribing", "the subscription to wait")
        start_server({**config, "secure.listen": f'"127.0.0.1:{port}"'})
        await until(lambda: len(infos) == 2, "the resubscription", 20)
        after = infos[1]
        assert after.resubscribed and not after.recovered
        assert after.epoch != before.epoch, "a restart starts a new epoch"
        assert gaps == [Gap("chat:e", StreamPosition(before.epoch, 1), StreamPosition(after.epoch, 0))]
        assert await c.publish("chat:e", "after") == 1
        assert [p.data for p in await take(sub, 1)] == ["after"]
        assert sub.since == StreamPosition(after.epoch, 1)


async def test_a_dropped_connection_recovers_the_missed_publications(start_server) -> None:
    server = start_server({"channels.history_size": "10"})
    hold: Optional[asyncio.Event] = None

    async def gate() -> None:
        if hold is not None:
            await hold.wait()

    infos: list[SubscribedInfo] = []
    async with client(server.url, "p", {"chat:*": ALL}) as publisher, \
            client(server.url, "r", {"chat:*": ALL}, gate=gate) as reader:
        sub = await reader.subscribe("chat:r", on_subscribed=infos.append)
        epoch = infos[0].epoch
        for n in (1, 2):
            await publisher.publish("chat:r", n)
        assert [p.offset for p in await take(sub, 2)] == [1, 2]

        # Cut the reader's TCP connection; its reconnect waits until the test has published.
        hold = asyncio.Event()
        ws = reader._ws
        assert ws is not None and ws.transport is not None
        ws.transport.abort()
        await until(lambda: reader.state == "connecting", "the reader to wait for its token")
        assert sub.state == "subscribing"
        for n in (3, 4):
            await publisher.publish("chat:r", n)
        hold.set()
        await until(lambda: len(infos) == 2, "the resubscription")
        assert infos[1] == SubscribedInfo("chat:r", epoch, 4, recovered=True, resubscribed=True)
        assert [(p.offset, p.data) for p in await take(sub, 2)] == [(3, 3), (4, 4)]
        assert sub.gaps == []
        await publisher.publish("chat:r", 5)
        assert (await take(sub, 1))[0].offset == 5
        h = await reader.history("chat:r", limit=2)
        assert h.epoch == epoch and [p.data for p in h.publications] == [4, 5]
