"""Structured logs: one line per event, JSON or text, each tagged with its call.

A call's ids live in a ``ContextVar`` holding a small mutable dict. The app binds a fresh dict
before the bridge starts, so every task the bridge spawns inherits the *same* dict; when
Twilio's ``start`` names the call, filling the dict in tags every later line of every task.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

CALL_FIELDS = ("call_sid", "stream_sid")

_call: ContextVar[dict[str, str | None] | None] = ContextVar("telephony_call", default=None)

# Attributes every LogRecord has; anything else was passed through ``extra=`` and is data.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"}  # uvicorn repeats its message with ANSI colours


def bind_call() -> dict[str, str | None]:
    """Starts a call's log context in the current task; returns the dict to fill in later."""
    ids: dict[str, str | None] = {name: None for name in CALL_FIELDS}
    _call.set(ids)
    return ids


class CallContextFilter(logging.Filter):
    """Copies the current call's ids onto each record (None outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _call.get() or {}
        for name in CALL_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, ids.get(name))
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
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = " ".join(f"{k}={getattr(record, k)}" for k in CALL_FIELDS if getattr(record, k, None))
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
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
