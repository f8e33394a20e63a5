"""Connected apps: OAuth 2.0 clients, their secrets' digests, token-signing keys

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import twofold.storage.tables

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connected_apps",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("organization_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("grant_type", sa.String(length=32), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("redirect_uris", sa.JSON(), nullable=False),
        sa.Column("first_party", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("auth_method", sa.String(length=32), nullable=False),
        sa.Column("jwks", sa.JSON(), nullable=True),
        sa.Column("tokens_valid_after", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_connected_apps_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connected_apps")),
        sa.UniqueConstraint("client_id", name=op.f("uq_connected_apps_client_id")),
    )
    op.create_index(op.f("ix_connected_apps_organization_id"), "connected_apps", ["organization_id"], unique=False)
    op.create_table(
        "client_secrets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("expires_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["connected_apps.id"], name=op.f("fk_client_secrets_app_id_connected_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client_secrets")),
        sa.UniqueConstraint("digest", name=op.f("uq_client_secrets_digest")),
    )
    op.create_index(op.f("ix_client_secrets_app_id"), "client_secrets", ["app_id"], unique=False)
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=16), nullable=False),
        sa.Column("private_key_sealed", sa.Text(), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("retired_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )


def downgrade() -> None:
    op.drop_table("signing_keys")
    op.drop_index(op.f("ix_client_secrets_app_id"), table_name="client_secrets")
    op.drop_table("client_secrets")
    op.drop_index(op.f("ix_connected_apps_organization_id"), table_name="connected_apps")
    op.drop_table("connected_apps")
