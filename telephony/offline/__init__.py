"""Offline: everything that lets a whole call run on one machine with no account and no network.

Here: the local Realtime engine (``local_engine``) and its websocket and in-process servers
(``local_realtime``), a scripted engine for tests (``scripted_realtime``), the agent's voices, a
Twilio caller simulator, ``telephony simulate`` (``dial``), the console view, ``telephony demo``,
WAV helpers and call analysis, and the bundled caller recording (``assets``).
May import anything in the package; nothing but ``cli`` and ``serve.upstream`` imports it.
"""
