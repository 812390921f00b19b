"""Structured logs: one line per event, JSON or text, each tagged with its call.

A call's ids live in a ``ContextVar`` holding a small mutable dict. The app binds a fresh dict
before the bridge starts, so every task the bridge spawns inherits the *same* dict; when
Twilio's ``start`` names the call, filling the dict in tags every later line of every task.

Two defences against what a peer sends: text lines escape control characters (a call sid with a
newline cannot forge a line), and a call logs the first few warnings of each kind, then only
every power of ten of them, and at its end how many were not logged (a flood of bad frames
cannot flood the logs).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

CALL_FIELDS = ("call_sid", "stream_sid")

REPEATS_LOGGED = 5  # warnings of one kind logged in full per call, before only powers of ten are


class _CallIds(dict):
    """A call's log ids, and how many warnings of each kind (logger, message template) it logged."""

    __slots__ = ("repeats",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.repeats: dict[tuple[str, object], int] = {}


_call: ContextVar[_CallIds | None] = ContextVar("telephony_call", default=None)

# Attributes every LogRecord has; anything else was passed through ``extra=`` and is data.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"}  # uvicorn repeats its message with ANSI colours


def bind_call() -> dict[str, str | None]:
    """Starts a call's log context in the current task; returns the dict to fill in later."""
    ids = _CallIds({name: None for name in CALL_FIELDS})
    _call.set(ids)
    return ids


def safe_extra(data: dict) -> dict:
    """``data`` for ``extra=``: keys a LogRecord owns (``name``, ``msg``...) get a ``data_`` prefix,
    since logging raises on them."""
    return {f"data_{k}" if k in _STANDARD else k: v for k, v in data.items()}


def _power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


class RepeatLimiter(logging.Filter):
    """Per call, passes the first ``REPEATS_LOGGED`` warnings of each kind, then every 10th, 100th..."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _call.get()
        if record.levelno < logging.WARNING or ids is None or hasattr(record, "not_logged"):
            return True
        key = (record.name, record.msg)
        n = ids.repeats[key] = ids.repeats.get(key, 0) + 1
        if n <= REPEATS_LOGGED:
            return True
        if _power_of_ten(n):
            record.repeat = n
            return True
        return False


def report_repeats() -> None:
    """At a call's end: one line per kind of warning it had that was not always logged."""
    ids = _call.get()
    if ids is None:
        return
    for (name, template), n in ids.repeats.items():
        shown = REPEATS_LOGGED + sum(1 for k in range(1, 20) if REPEATS_LOGGED < 10 ** k <= n)
        if n > shown:
            logging.getLogger(name).warning("%d warning(s) like %r were not logged for this call", n - shown,
                                            str(template)[:80], extra={"not_logged": n - shown})
    ids.repeats.clear()


def _escaped(c: str) -> str:
    if c.isprintable():
        return c
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def escape(text: str) -> str:
    """``text`` on one line, as it reads: every character that is not printable (controls and
    newlines, line separators, and format characters such as bidi overrides) as ``\\xNN``/``\\uNNNN``."""
    return text if text.isprintable() else "".join(map(_escaped, text))


class CallContextFilter(logging.Filter):
    """Copies the current call's ids onto each record (None outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _call.get() or {}
        for name in CALL_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, ids.get(name))
        return True


# The one rule for what a log line may carry: ids, event names, counts, durations and outcomes.
# What callers said or keyed, their call's instructions and metadata, and what tools were given
# and gave stay in the call record: these ``extra=`` keys never reach a log line, whoever logs them
# (CallerDataFilter), and messages name them only by kind (see core/call.py's tool lines).
CALLER_DATA = frozenset({"text", "parameters", "arguments", "output", "error", "digits", "instructions",
                         "metadata", "transcript", "to", "from"})


class CallerDataFilter(logging.Filter):
    """Enforces ``CALLER_DATA`` on every record, and keeps query strings out of uvicorn's access log
    (an outbound call's answer URL carries its number, instructions and metadata there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key in CALLER_DATA.intersection(vars(record)):
            delattr(record, key)
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) >= 3:
            path = str(record.args[2])
            if "?" in path:
                record.args = (*record.args[:2], path.split("?", 1)[0], *record.args[3:])
        return True


class StreamUrlFilter(logging.Filter):
    """uvicorn logs every websocket's path (``"WebSocket /twilio/media-stream/…" [accepted]``): the
    MAC of a stream URL's signed segment is masked there (the rest, call sid included, stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("uvicorn"):
            from telephony.serve.stream_paths import redact_segments

            text = record.getMessage()
            clean = redact_segments(text)
            if clean != text:
                record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """One line per record: peers' strings (sids, mark names, reasons) are escaped, never raw."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        text = super().formatMessage(record)
        tags = " ".join(f"{k}={escape(str(getattr(record, k)))}" for k in CALL_FIELDS if getattr(record, k, None))
        if getattr(record, "repeat", None):
            text += f" (warning {record.repeat} of its kind this call; only powers of ten are logged)"
        return f"{text} [{tags}]" if tags else text


class _Redacting(logging.Formatter):
    """Last line of defence: a secret that slipped into a message is masked in the output."""

    def __init__(self, inner: logging.Formatter, secrets: list[str]) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = [s for s in secrets if len(s) >= 6]  # a short value would mask ordinary text

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, "[redacted]")
        return line


def configure(level: str = "INFO", fmt: str = "text", stream=None, secrets: list[str] = ()) -> logging.Handler:
    """Routes every logger (uvicorn's too) through one handler on the root logger."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(_Redacting(formatter, list(secrets)) if secrets else formatter)
    handler.addFilter(CallContextFilter())
    handler.addFilter(RepeatLimiter())
    handler.addFilter(CallerDataFilter())
    handler.addFilter(StreamUrlFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
