"""The client against the real ``palisade`` binary on 127.0.0.1."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import palisade_client
from palisade_client import NotConnected, Refused

from conftest import token

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.4}


async def next_data(c: palisade_client.PalisadeClient, timeout: float = 10) -> Any:
    return await asyncio.wait_for(c.recv(), timeout)


async def test_authenticates_and_exchanges_data(start_server) -> None:
    server = start_server()
    async with palisade_client.connect(server.url, token_provider=lambda: token("42", 600), **FAST) as c:
        assert c.state == "open"
        assert c.session is not None and c.session.user_id == "42"
        await c.send({"n": 1})
        assert await next_data(c) == 'Server received: {"n":1}'
        await c.send("two")
        async for data in c:
            assert data == 'Server received: "two"'
            break
    assert c.state == "closed"
    with pytest.raises(palisade_client.ClientClosed):
        await c.send("late")


async def test_refresh_keeps_the_session_past_the_first_exp(start_server) -> None:
    server = start_server({"auth.expiry_warning_secs": "2"})
    reasons: list[str] = []

    async def provider(reason: str) -> str:
        reasons.append(reason)
        return token("42", 600 if reason == "refresh" else 3)

    states: list[str] = []
    async with palisade_client.connect(server.url, token_provider=provider, **FAST) as c:
        first = c.session
        c._on_state = states.append  # After the first open: any change would be a reconnect.
        await asyncio.sleep(4)
        await c.send("still here")
        assert await next_data(c) == 'Server received: "still here"'
        assert reasons == ["connect", "refresh"]
        assert c.session is not None and first is not None
        assert c.session.session_id == first.session_id
        assert (c.session.exp or 0) > (first.exp or 0) + 100
        assert states == []


async def test_reconnects_after_a_restart_and_delivers_the_queue(start_server) -> None:
    first = start_server()
    port = first.secure.rsplit(":", 1)[1]
    async with palisade_client.connect(
        first.url, token_provider=lambda: token("42", 600), queue_size=5, **FAST
    ) as c:
        before = c.session
        first.stop()
        await asyncio.sleep(0.2)
        assert c.state in ("reconnecting", "connecting")
        assert any(e.reason == "shutting_down" and e.reconnect == "backoff" for e in c.errors)
        await c.send("queued")
        start_server({"secure.listen": f'"127.0.0.1:{port}"'})
        await c.wait_open(20)
        assert c.session is not None and before is not None
        assert c.session.session_id != before.session_id
        assert await next_data(c, 20) == 'Server received: "queued"'


async def test_a_revoked_session_raises_refused_and_stops(start_server) -> None:
    server = start_server()
    async with palisade_client.connect(server.url, token_provider=lambda: token("42", 600), **FAST) as c:
        assert c.session is not None
        status, _ = server.admin_call("DELETE", f"/sessions/{c.session.session_id}")
        assert 200 <= status < 300
        with pytest.raises(Refused) as info:
            async for _ in c:
                pass
        assert info.value.reason == "revoked"
        assert info.value.code == 1008
        assert c.state == "closed"
        with pytest.raises(Refused):
            await c.send("x")


async def test_an_invalid_token_is_refused_at_connect(start_server) -> None:
    server = start_server()
    with pytest.raises(Refused) as info:
        async with palisade_client.connect(server.url, token_provider=lambda: "not.a.jwt", **FAST):
            pass
    assert info.value.reason == "invalid_token"


async def test_a_rate_limit_backs_off_for_retry_after_ms(start_server) -> None:
    server = start_server({"firewall.messages_per_sec": "2", "firewall.message_burst": "3"})
    async with palisade_client.connect(server.url, token_provider=lambda: token("42", 600), **FAST) as c:
        with pytest.raises(NotConnected):
            for i in range(20):
                await c.send(i)
                await asyncio.sleep(0.01)
        await c.wait_open(10)
        limited = [e for e in c.errors if e.reason == "rate_limited"]
        assert limited, c.errors
        assert limited[0].reconnect == "backoff"
        assert limited[0].retry_after_ms is not None and 0 < limited[0].retry_after_ms <= 1000


async def test_after_refresh_gets_a_new_token(start_server) -> None:
    server = start_server({"auth.expiry_warning_secs": "0"})
    reasons: list[str] = []

    def provider(reason: str) -> str:
        reasons.append(reason)
        return token("42", 2)

    async with palisade_client.connect(server.url, token_provider=provider, **FAST) as c:
        await asyncio.sleep(2.5)
        await c.wait_open(10)
        assert any(e.reason == "token_expired" and e.reconnect == "after_refresh" for e in c.errors)
        assert reasons[:2] == ["connect", "after_refresh"]
