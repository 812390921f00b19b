"""The history read back: one call with its turns, events and latency, or a page of ended calls,
as the JSON the calls API answers."""

from __future__ import annotations

import statistics
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from telephony.history.models import calls, events, turns

PAGE_MAX = 200


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _iso(value: datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else None


def _ms_since(start: datetime, value: datetime | None) -> int | None:
    value = _utc(value)
    return None if value is None else round((value - start).total_seconds() * 1000)


def call_summary(row: Any) -> dict[str, Any]:
    started, ended = _utc(row.started_at), _utc(row.ended_at)
    return {
        "call_sid": row.call_sid, "stream_sid": row.stream_sid, "route": row.route, "direction": row.direction,
        "from": row.from_number, "to": row.to_number, "profile": row.profile, "dialect": row.dialect,
        "state": row.state, "started_at": _iso(started), "ended_at": _iso(ended),
        "duration_s": round((ended - started).total_seconds(), 3) if ended else None,
        "outcome": row.outcome, "end_reason": row.end_reason, "handoffs": row.handoffs,
        "answered_by": row.answered_by,
    }


async def call_detail(connection: AsyncConnection, call_sid: str) -> dict[str, Any] | None:
    """The call, its turns and events in the order they happened (times: ms since the call started)."""
    call = (await connection.execute(select(calls).where(calls.c.call_sid == call_sid))).first()
    if call is None:
        return None
    start = _utc(call.started_at)
    turn_rows = (await connection.execute(
        select(turns).where(turns.c.call_sid == call_sid).order_by(turns.c.id))).all()
    event_rows = (await connection.execute(
        select(events).where(events.c.call_sid == call_sid).order_by(events.c.at, events.c.id))).all()
    said = [{
        "seq": n, "speaker": t.speaker, "text": t.text,
        "start_ms": _ms_since(start, t.started_at), "end_ms": _ms_since(start, t.ended_at),
        "interrupted": t.interrupted, "resumed": t.resumed, "heard_ms": t.heard_ms,
        "latency_ms": t.latency_ms, "model_ms": t.model_ms, "bridge_ms": t.bridge_ms,
    } for n, t in enumerate(turn_rows, 1)]
    happened = [{
        "kind": e.kind, "at_ms": _ms_since(start, e.at), "name": e.name, "outcome": e.outcome,
        "decision": e.decision, "latency_ms": e.latency_ms, "data": e.data,
    } for e in event_rows]
    return {**call_summary(call), "turns": said, "events": happened, "latency": latency_summary(said)}


def latency_summary(said: list[dict[str, Any]]) -> dict[str, Any]:
    """Per call: how long the caller waited for the agent, over the agent turns that say."""
    values = sorted(t["latency_ms"] for t in said if t["latency_ms"] is not None)
    if not values:
        return {"turns": 0, "median_ms": None, "max_ms": None, "model_median_ms": None, "bridge_median_ms": None}

    def median(key: str) -> float | None:
        parts = [t[key] for t in said if t[key] is not None]
        return round(statistics.median(parts), 1) if parts else None

    return {"turns": len(values), "median_ms": round(statistics.median(values), 1), "max_ms": values[-1],
            "model_median_ms": median("model_ms"), "bridge_median_ms": median("bridge_ms")}


async def ended_calls(connection: AsyncConnection, limit: int, before: datetime | None) -> list[dict[str, Any]]:
    """Ended calls, newest first, started before ``before`` (the previous page's last ``started_at``)."""
    query = select(calls).where(calls.c.state == "ended")
    if before is not None:
        query = query.where(calls.c.started_at < before)
    rows = (await connection.execute(query.order_by(calls.c.started_at.desc()).limit(limit))).all()
    return [call_summary(row) for row in rows]
