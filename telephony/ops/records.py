"""Call records: one JSON-lines file per call in ``CALL_RECORDS_DIR``.

Each line is one fact (``start``, ``barge_in``, ``response_done``, transcripts, latencies,
``end``, then a ``summary``). A line is one small ``write`` on a file opened once per call, so
the event loop is never held up for long.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("telephony.records")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def record_path(directory: Path, call_sid: str) -> Path:
    # The sid comes from the wire: never let it name a path outside the directory.
    return directory / f"{_UNSAFE.sub('_', call_sid).lstrip('.') or 'unknown'}.jsonl"


class CallRecordFile:
    def __init__(self, directory: Path, call_sid: str) -> None:
        self.path = record_path(directory, call_sid)
        self._file: TextIO | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:  # a full or read-only disk must not take the call down
            log.error("call record %s cannot be opened: %s", self.path, exc)

    def write(self, kind: str, data: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps({"ts": round(time.time(), 3), "kind": kind, **data}, default=str)
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as exc:
            log.error("call record %s: write failed: %s", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_records(path: Path) -> list[dict[str, Any]]:
    """A call record file back as dicts (tools, tests)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
