"""The call-history tables. The Alembic migrations in ``migrations/versions`` create the same
schema (a test compares them); change both together.

Turns and events name their call by ``call_sid`` without a foreign key on purpose: a call's row
that could not be written while the database was down must not make every later row of the same
call fail too (partial history beats none). Rows are keyed (call_sid, stream_sid, seq) so a batch
retried after a commit whose answer was lost is written once (``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

SCHEMA_REVISION = "0001"  # the newest migration's revision (a test checks it is Alembic's head)

SID = 128  # Twilio's sids are 34 characters, OpenAI's SIP call ids longer; a peer's string is cut to this

calls = Table(
    "calls", metadata,
    Column("call_sid", String(SID), primary_key=True),
    Column("stream_sid", String(SID)),  # the latest stream's (a handed-over call has had several)
    Column("route", String(32), nullable=False),  # twilio, openai_sip, transcription
    Column("direction", String(32)),
    Column("from_number", String(256)),
    Column("to_number", String(256)),
    Column("profile", String(128)),
    Column("dialect", String(16)),
    Column("state", String(16), nullable=False),  # live, ended
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("outcome", String(32)),  # normal, abnormal
    Column("end_reason", Text),
    Column("handoffs", Integer, nullable=False, server_default="0"),
    Column("answered_by", String(64)),  # Twilio's AMD verdict, outbound calls
    Index("ix_calls_state_started", "state", "started_at"),
)

turns = Table(
    "turns", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_sid", String(SID), nullable=False),
    Column("stream_sid", String(SID), nullable=False),  # "" on routes without one (OpenAI SIP)
    Column("seq", Integer, nullable=False),
    Column("speaker", String(16), nullable=False),  # caller, agent
    Column("item_id", String(SID)),  # the model's item: a turn cut after it was recorded is updated by it
    Column("text", Text, nullable=False),
    Column("started_at", DateTime(timezone=True)),  # None where the records do not say
    Column("ended_at", DateTime(timezone=True)),
    Column("heard_ms", Integer),  # agent turns cut by the caller: how much of it they heard
    Column("interrupted", Boolean, nullable=False, server_default=false()),
    Column("resumed", Boolean, nullable=False, server_default=false()),  # paused by a barge-in, then played on
    Column("latency_ms", Float),  # agent turns: caller's end of speech → first agent audio sent
    Column("model_ms", Float),  # … of which waiting for the model's first audio
    Column("bridge_ms", Float),  # … of which this service, audio in → audio out
    UniqueConstraint("call_sid", "stream_sid", "seq", name="uq_turns_call_stream_seq"),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_sid", String(SID), nullable=False),
    Column("stream_sid", String(SID), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(32), nullable=False),  # barge_in, interruption, tool_call, dtmf, transfer, …
    Column("at", DateTime(timezone=True), nullable=False),
    Column("name", String(128)),  # a tool call's tool
    Column("outcome", String(32)),  # a tool call's: ok, error, timeout, unknown_tool
    Column("decision", String(32)),  # an interruption's: pause, resume, cut…
    Column("latency_ms", Float),
    Column("data", JSON),  # the record's other fields
    UniqueConstraint("call_sid", "stream_sid", "seq", name="uq_events_call_stream_seq"),
)
