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

Channels::

    sub = await c.subscribe("chat:room1", on_gap=lambda gap: reload_state())
    await c.publish("chat:room1", {"text": "hi all"})
    async for pub in sub:
        print(pub.offset, pub.user_id, pub.data)
"""

from .backoff import Advice, CloseInfo, Decision, Retry, Stop, advice_for_code, decide, full_jitter
from .channels import (
    Gap,
    History,
    PresenceUser,
    Publication,
    StreamPosition,
    SubscribedInfo,
    Subscription,
)
from .client import PROTOCOL, PalisadeClient, Session, State, TokenReason, connect
from .errors import (
    ChannelError,
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
    "ChannelError",
    "ClientClosed",
    "CloseInfo",
    "Decision",
    "Gap",
    "History",
    "NotConnected",
    "PalisadeClient",
    "PalisadeError",
    "PresenceUser",
    "Publication",
    "QueueFull",
    "Refused",
    "Retry",
    "Session",
    "State",
    "Stop",
    "StreamPosition",
    "SubscribedInfo",
    "Subscription",
    "TokenProviderError",
    "TokenReason",
    "advice_for_code",
    "connect",
    "decide",
    "full_jitter",
]
