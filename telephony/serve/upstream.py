"""Where a call's Realtime session comes from: the one place that picks the upstream.

``REALTIME_URL=local`` runs the offline engine inside this process (no socket, no key); any other
URL is a websocket to the provider through ``realtime_client``. The app and the doctor ask here;
nothing else in ``serve`` imports ``offline``.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from telephony.serve import realtime_client
from telephony.serve.realtime_client import RealtimeTransport
from telephony.settings import Settings
from telephony.wire.realtime import Dialect

# Opens one Realtime session; a bridge calls it once per call (again on a reconnect).
Connector = Callable[[], Awaitable[RealtimeTransport]]


def connector(settings: Settings, dialect: Dialect, greeting: str = "", intent: str | None = None) -> Connector:
    """A connector for ``settings``: ``intent="transcription"`` opens transcription-only sessions."""
    if settings.realtime_url == "local":
        from telephony.offline.local_realtime import local_connector

        return local_connector(greeting=greeting, dialect=settings.realtime_dialect,
                               transcription=intent == "transcription")
    return lambda: realtime_client.connect(settings, dialect.headers, intent=intent, dialect=dialect)
