"""WebAuthn: challenges, cloned-authenticator flag, per-organization attestation policy

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import twofold.storage.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "challenges",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("challenge_hash", sa.String(length=64), nullable=False),
        sa.Column("login_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("method_type", sa.String(length=32), nullable=True),
        sa.Column("expires_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_challenges_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_challenges")),
        sa.UniqueConstraint("challenge_hash", name=op.f("uq_challenges_challenge_hash")),
    )
    with op.batch_alter_table("verification_methods", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cloned_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("webauthn_attestation", sa.String(length=16), server_default="none", nullable=False)
        )
        batch_op.add_column(sa.Column("webauthn_allowed_aaguids", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("webauthn_allowed_aaguids")
        batch_op.drop_column("webauthn_attestation")
    with op.batch_alter_table("verification_methods", schema=None) as batch_op:
        batch_op.drop_column("cloned_at")
    op.drop_table("challenges")
