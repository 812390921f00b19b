"""Call history: calls, their turns and their events.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SID = 128


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_sid", sa.String(SID), primary_key=True),
        sa.Column("stream_sid", sa.String(SID)),
        sa.Column("route", sa.String(32), nullable=False),
        sa.Column("direction", sa.String(32)),
        sa.Column("from_number", sa.String(256)),
        sa.Column("to_number", sa.String(256)),
        sa.Column("profile", sa.String(128)),
        sa.Column("dialect", sa.String(16)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("outcome", sa.String(32)),
        sa.Column("end_reason", sa.Text),
        sa.Column("handoffs", sa.Integer, nullable=False, server_default="0"),
        sa.Column("answered_by", sa.String(64)),
    )
    op.create_index("ix_calls_state_started", "calls", ["state", "started_at"])
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("call_sid", sa.String(SID), nullable=False),
        sa.Column("stream_sid", sa.String(SID), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("speaker", sa.String(16), nullable=False),
        sa.Column("item_id", sa.String(SID)),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("heard_ms", sa.Integer),
        sa.Column("interrupted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("resumed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("latency_ms", sa.Float),
        sa.Column("model_ms", sa.Float),
        sa.Column("bridge_ms", sa.Float),
        sa.UniqueConstraint("call_sid", "stream_sid", "seq", name="uq_turns_call_stream_seq"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("call_sid", sa.String(SID), nullable=False),
        sa.Column("stream_sid", sa.String(SID), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(128)),
        sa.Column("outcome", sa.String(32)),
        sa.Column("decision", sa.String(32)),
        sa.Column("latency_ms", sa.Float),
        sa.Column("data", sa.JSON),
        sa.UniqueConstraint("call_sid", "stream_sid", "seq", name="uq_events_call_stream_seq"),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("turns")
    op.drop_index("ix_calls_state_started", "calls")
    op.drop_table("calls")
