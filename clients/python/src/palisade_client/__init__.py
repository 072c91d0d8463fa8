"""``palisade-client``: the official Python client of Palisade's ``palisade.v1`` subprotocol.

It authenticates, refreshes the token when the server says ``expiring``, and reconnects with
full-jitter exponential backoff as the server advises (``now``, ``backoff``,
``after_refresh``, ``never``); see docs/clients.md.

Example::

    import asyncio, palisade_client

    async def main():
        async with palisade_client.connect(
            "wss://chat.example.com/", token_provider=lambda reason: fetch_jwt()
        ) as c:
            await c.send({"text": "hello"})
            async for data in c:
                print(data)

    asyncio.run(main())
"""

from .backoff import Advice, CloseInfo, Decision, Retry, Stop, advice_for_code, decide, full_jitter
from .client import PROTOCOL, PalisadeClient, Session, State, TokenReason, connect
from .errors import (
    ClientClosed,
    NotConnected,
    PalisadeError,
    QueueFull,
    Refused,
    TokenProviderError,
)

__all__ = [
    "PROTOCOL",
    "Advice",
    "ClientClosed",
    "CloseInfo",
    "Decision",
    "NotConnected",
    "PalisadeClient",
    "PalisadeError",
    "QueueFull",
    "Refused",
    "Retry",
    "Session",
    "State",
    "Stop",
    "TokenProviderError",
    "TokenReason",
    "advice_for_code",
    "connect",
    "decide",
    "full_jitter",
]
