"""Push: challenges with number matching, device request ids (jti) seen

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import twofold.storage.tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "push_challenges",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("login_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("method_id", sa.String(length=32), nullable=True),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("choices", sa.JSON(), nullable=False),
        sa.Column("app", sa.String(length=200), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=32), nullable=True),
        sa.Column("decided_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("not_me", sa.Boolean(), nullable=False),
        sa.Column("wrong_number", sa.Boolean(), nullable=False),
        sa.Column("expires_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_push_challenges_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_push_challenges")),
    )
    op.create_index(op.f("ix_push_challenges_user_id"), "push_challenges", ["user_id"], unique=False)
    op.create_table(
        "device_request_ids",
        sa.Column("jti_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti_hash", name=op.f("pk_device_request_ids")),
    )
    op.create_index(op.f("ix_device_request_ids_expires_at"), "device_request_ids", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_device_request_ids_expires_at"), table_name="device_request_ids")
    op.drop_table("device_request_ids")
    op.drop_index(op.f("ix_push_challenges_user_id"), table_name="push_challenges")
    op.drop_table("push_challenges")
