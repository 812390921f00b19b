"""The service: the web app and the I/O shells that run the core over real sockets.

Here: the Starlette app and its routes (``app``), the call's asyncio shell (``bridge``) and the
transcription fork's (``fork``), uvicorn's direct lane, the Realtime websocket client, the server
with its graceful drain, webhook signatures and stream tokens, call limits, outbound calls, Twilio's
REST API, transcript feeds, and the per-call telemetry that feeds ``ops``.
May import: ``core``, ``wire``, ``ops``, ``history`` and ``telephony.settings``. Reaches ``offline`` only through
``upstream.connector``, the one place that picks the Realtime connection.
"""
