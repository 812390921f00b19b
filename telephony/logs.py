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
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


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


def configure(level: str = "INFO", fmt: str = "text", stream=None) -> logging.Handler:
    """Routes every logger (uvicorn's too) through one handler on the root logger."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(CallContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
