"""Single sign-on: upstream sign-ins in flight, whether a session did MFA, acr verbatim; consents found by app

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

import twofold.storage.tables

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UTC = twofold.storage.tables.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "sso_requests",
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("identity_provider_id", sa.String(length=32), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("code_verifier_sealed", sa.Text(), nullable=True),
        sa.Column("saml_request_id", sa.String(length=128), nullable=True),
        sa.Column("browser_hash", sa.String(length=64), nullable=True),
        sa.Column("step_up_session_id", sa.String(length=32), nullable=True),
        sa.Column("return_to", sa.String(length=2000), nullable=True),
        sa.Column("expires_at", UTC(timezone=True), nullable=False),
        sa.Column("used_at", UTC(timezone=True), nullable=True),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["identity_provider_id"],
            ["identity_providers.id"],
            name=op.f("fk_sso_requests_identity_provider_id_identity_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("state_hash", name=op.f("pk_sso_requests")),
    )
    op.create_index(op.f("ix_sso_requests_expires_at"), "sso_requests", ["expires_at"], unique=False)
    # Deleting or narrowing an app finds its consents by app_id.
    op.create_index(op.f("ix_oauth_consents_app_id"), "oauth_consents", ["app_id"], unique=False)
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("mfa_verified", sa.Boolean(), nullable=False, server_default=sa.false()))
        # An upstream's acr is kept verbatim: SAML AuthnContextClassRefs run past 64 characters.
        batch.alter_column("acr", existing_type=sa.String(length=64), type_=sa.String(length=255))
    for table in ("authorization_codes", "refresh_tokens"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("acr", existing_type=sa.String(length=64), type_=sa.String(length=255))
    # Sessions open at the upgrade were all made here: they did MFA when their amr says so.
    connection = op.get_bind()
    sessions = sa.table("sessions", sa.column("id", sa.String), sa.column("amr", sa.JSON))
    flags = sa.table("sessions", sa.column("id", sa.String), sa.column("mfa_verified", sa.Boolean))
    for session_id, amr in connection.execute(sa.select(sessions.c.id, sessions.c.amr)).all():
        values = json.loads(amr) if isinstance(amr, str) else amr
        if isinstance(values, list) and "mfa" in values:
            connection.execute(sa.update(flags).where(flags.c.id == session_id).values(mfa_verified=True))


def downgrade() -> None:
    for table in ("authorization_codes", "refresh_tokens"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("acr", existing_type=sa.String(length=255), type_=sa.String(length=64))
    with op.batch_alter_table("sessions") as batch:
        batch.alter_column("acr", existing_type=sa.String(length=255), type_=sa.String(length=64))
        batch.drop_column("mfa_verified")
    op.drop_index(op.f("ix_oauth_consents_app_id"), table_name="oauth_consents")
    op.drop_index(op.f("ix_sso_requests_expires_at"), table_name="sso_requests")
    op.drop_table("sso_requests")
