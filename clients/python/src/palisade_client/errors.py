"""Typed exceptions of :mod:`palisade_client`."""

from __future__ import annotations

from typing import Optional

from .backoff import Advice


class PalisadeError(Exception):
    """A failure of a ``palisade.v1`` connection.

    ``reason`` is the server's (``token_expired``, ``revoked``, ...) or the client's
    (``not_connected``, ``queue_full``, ``token_provider_failed``, ``connection_lost``, ...).
    """

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        reconnect: Optional[Advice] = None,
        retry_after_ms: Optional[int] = None,
        code: Optional[int] = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.reconnect = reconnect
        self.retry_after_ms = retry_after_ms
        self.code = code


class Refused(PalisadeError):
    """The server closed and advised ``never``: the client stopped for good (bad or revoked
    token, revoked session, protocol error). Raised by iteration and by ``send``."""


class NotConnected(PalisadeError):
    """``send`` while not connected, with no queue (``queue_size=0``)."""


class QueueFull(PalisadeError):
    """``send`` while not connected, with the queue full."""


class ClientClosed(PalisadeError):
    """``send`` after the client was closed."""


class TokenProviderError(PalisadeError):
    """The token provider raised; the client reports it and retries with backoff."""


class ChannelError(PalisadeError):
    """A channel request failed; the connection goes on.

    ``reason`` is the server's (``permission_denied``, ``bad_channel``,
    ``too_many_subscriptions``, ``rate_limited``, ``message_too_big``, ``unavailable``,
    ``bad_envelope``) or the client's: ``timeout`` (no reply in time), ``not_connected`` (not
    connected and ``queue_size`` is 0), ``queue_full``, ``connection_lost`` (the connection
    closed before the reply: the request may or may not have taken effect), ``closed`` (the
    client was closed), ``already_subscribed``, ``unsubscribed`` (ended before the server
    confirmed it). A subscription ended by the server (``permission_revoked``,
    ``channel_closed``) raises it from its iteration. ``channel`` names the request's channel.
    """

    def __init__(self, reason: str, channel: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.channel = channel

    def __str__(self) -> str:
        return f"{self.channel}: {super().__str__()}"
