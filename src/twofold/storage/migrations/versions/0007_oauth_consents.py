"""Remembered consent to applications that are not first-party

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import twofold.storage.tables

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UTC = twofold.storage.tables.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "oauth_consents",
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("granted_at", UTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_oauth_consents_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["app_id"], ["connected_apps.id"], name=op.f("fk_oauth_consents_app_id_connected_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "app_id", name=op.f("pk_oauth_consents")),
    )


def downgrade() -> None:
    op.drop_table("oauth_consents")
