"""The calls API's history: ``GET /calls/{sid}`` and ``GET /calls?state=ended``. The app checks
the bearer token first; these answer the rest, a 4xx with its reason for a bad request and a 503
when the history is off or its database cannot answer."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse

from telephony.history import reader
from telephony.history.database import describe_error
from telephony.history.writer import HistoryWriter

log = logging.getLogger("telephony.history")

# Twilio's sids (CA…), OpenAI's SIP call ids (rtc_…): letters, digits and a little punctuation.
_CALL_SID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
DEFAULT_LIMIT = 50


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class HistoryApi:
    def __init__(self, writer: HistoryWriter | None) -> None:
        self.writer = writer  # None: CALL_HISTORY=false

    async def call(self, request: Request) -> JSONResponse:
        sid = request.path_params["call_sid"]
        if not _CALL_SID.fullmatch(sid):
            return _error(400, "not a call sid: 1 to 128 letters, digits, '_', '.', ':' or '-'")
        found = await self._read(lambda connection: reader.call_detail(connection, sid))
        if isinstance(found, JSONResponse):
            return found
        if found is None:
            return _error(404, f"no call {sid} in the history")
        return JSONResponse(found)

    async def ended(self, request: Request) -> JSONResponse:
        query = request.query_params
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            limit = 0
        if not 1 <= limit <= reader.PAGE_MAX:
            return _error(400, f"limit must be a whole number from 1 to {reader.PAGE_MAX}")
        before = None
        if "before" in query:
            try:
                before = datetime.fromisoformat(query["before"])
            except ValueError:
                return _error(400, "before must be an ISO 8601 time, as a page's next_before "
                                   "(2026-12-05T07:17:31.123Z)")
            before = before.replace(tzinfo=timezone.utc) if before.tzinfo is None else before.astimezone(timezone.utc)
        page = await self._read(lambda connection: reader.ended_calls(connection, limit, before))
        if isinstance(page, JSONResponse):
            return page
        next_before = page[-1]["started_at"] if len(page) == limit else None
        return JSONResponse({"calls": page, "next_before": next_before})

    async def _read(self, query):
        if self.writer is None:
            return _error(503, "the call history is off (CALL_HISTORY=false)")
        try:
            return await self.writer.read(query)
        except asyncio.TimeoutError:
            return _error(503, "the call history database did not answer in time")
        except Exception as exc:  # noqa: BLE001 - the database's failure, not the request's
            log.warning("call history: read failed (%s)", describe_error(exc))
            return _error(503, f"the call history database cannot be read ({describe_error(exc)})")
