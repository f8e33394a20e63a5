"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import twofold.storage.tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("organization_id", sa.String(length=32), nullable=True),
        sa.Column("at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("actor_id", sa.String(length=32), nullable=True),
        sa.Column("subject_id", sa.String(length=32), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_at", ["at"], unique=False)
        batch_op.create_index("ix_audit_org_at", ["organization_id", "at", "id"], unique=False)

    op.create_table(
        "organizations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("parent_id", sa.String(length=32), nullable=True),
        sa.Column("root_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["organizations.id"],
            name=op.f("fk_organizations_parent_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
    )
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_organizations_root_id"), ["root_id"], unique=False)
        batch_op.create_index(
            "uq_organizations_root_name",
            ["name"],
            unique=True,
            sqlite_where=sa.text("parent_id IS NULL"),
            postgresql_where=sa.text("parent_id IS NULL"),
        )

    op.create_table(
        "throttles",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("blocked_until", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("window_start", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_throttles")),
    )
    with op.batch_alter_table("throttles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_throttles_updated_at"), ["updated_at"], unique=False)

    op.create_table(
        "identity_providers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("organization_id", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("issuer", sa.String(length=500), nullable=True),
        sa.Column("settings_encrypted", sa.Text(), nullable=True),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_identity_providers_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_providers")),
    )
    with op.batch_alter_table("identity_providers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_providers_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(
            "uq_identity_providers_local",
            ["organization_id"],
            unique=True,
            sqlite_where=sa.text("type = 'local'"),
            postgresql_where=sa.text("type = 'local'"),
        )

    op.create_table(
        "users",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("organization_id", sa.String(length=32), nullable=False),
        sa.Column("identity_provider_id", sa.String(length=32), nullable=False),
        sa.Column("external_subject", sa.String(length=500), nullable=True),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("username_key", sa.String(length=256), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("service_type", sa.String(length=32), nullable=True),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("locked_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_login_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("password_changed_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["identity_provider_id"],
            ["identity_providers.id"],
            name=op.f("fk_users_identity_provider_id_identity_providers"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_users_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("identity_provider_id", "external_subject", name="uq_users_idp_subject"),
        sa.UniqueConstraint("username_key", name=op.f("uq_users_username_key")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index("ix_users_org_username", ["organization_id", "username_key"], unique=False)

    op.create_table(
        "exemptions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("identity_provider_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("exempted_by", sa.String(length=32), nullable=True),
        sa.Column("exempted_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["identity_provider_id"],
            ["identity_providers.id"],
            name=op.f("fk_exemptions_identity_provider_id_identity_providers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_exemptions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exemptions")),
        sa.UniqueConstraint("user_id", name=op.f("uq_exemptions_user_id")),
    )
    op.create_table(
        "login_transactions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_login_transactions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_transactions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_login_transactions_token_hash")),
    )
    with op.batch_alter_table("login_transactions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_login_transactions_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_login_transactions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "one_time_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_one_time_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_one_time_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_one_time_tokens_token_hash")),
    )
    with op.batch_alter_table("one_time_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_one_time_tokens_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_one_time_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "permissions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("organization_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("granted_by", sa.String(length=32), nullable=True),
        sa.Column("granted_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_permissions_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_permissions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_permissions")),
        sa.UniqueConstraint("user_id", "organization_id", "name", name="uq_permissions_grant"),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("amr", sa.JSON(), nullable=False),
        sa.Column("acr", sa.String(length=64), nullable=False),
        sa.Column("auth_time", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("step_up_until", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_sessions_token_hash")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sessions_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "verification_methods",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload_encrypted", sa.Text(), nullable=True),
        sa.Column("lookup_key", sa.String(length=255), nullable=True),
        sa.Column("expires_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("login_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("last_used_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", twofold.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_verification_methods_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verification_methods")),
        sa.UniqueConstraint("lookup_key", name=op.f("uq_verification_methods_lookup_key")),
    )
    with op.batch_alter_table("verification_methods", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_verification_methods_user_id"), ["user_id"], unique=False)

    # R4: an account's kind and service type are fixed at creation, whatever writes to the table.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER users_kind_immutable BEFORE UPDATE OF kind, service_type ON users "
            "WHEN NEW.kind IS NOT OLD.kind OR NEW.service_type IS NOT OLD.service_type "
            "BEGIN SELECT RAISE(ABORT, 'users.kind and users.service_type never change'); END"
        )
    else:
        op.execute(
            "CREATE FUNCTION users_kind_immutable() RETURNS trigger AS $$ BEGIN "
            "IF NEW.kind IS DISTINCT FROM OLD.kind OR NEW.service_type IS DISTINCT FROM OLD.service_type THEN "
            "RAISE EXCEPTION 'users.kind and users.service_type never change'; END IF; RETURN NEW; END $$ "
            "LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER users_kind_immutable BEFORE UPDATE ON users "
            "FOR EACH ROW EXECUTE FUNCTION users_kind_immutable()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER IF EXISTS users_kind_immutable ON users")
        op.execute("DROP FUNCTION IF EXISTS users_kind_immutable()")
    with op.batch_alter_table("verification_methods", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_verification_methods_user_id"))

    op.drop_table("verification_methods")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_user_id"))
        batch_op.drop_index(batch_op.f("ix_sessions_expires_at"))

    op.drop_table("sessions")
    op.drop_table("permissions")
    with op.batch_alter_table("one_time_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_one_time_tokens_user_id"))
        batch_op.drop_index(batch_op.f("ix_one_time_tokens_expires_at"))

    op.drop_table("one_time_tokens")
    with op.batch_alter_table("login_transactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_transactions_user_id"))
        batch_op.drop_index(batch_op.f("ix_login_transactions_expires_at"))

    op.drop_table("login_transactions")
    op.drop_table("exemptions")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("ix_users_org_username")

    op.drop_table("users")
    with op.batch_alter_table("identity_providers", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_identity_providers_local",
            sqlite_where=sa.text("type = 'local'"),
            postgresql_where=sa.text("type = 'local'"),
        )
        batch_op.drop_index(batch_op.f("ix_identity_providers_organization_id"))

    op.drop_table("identity_providers")
    with op.batch_alter_table("throttles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_throttles_updated_at"))

    op.drop_table("throttles")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_organizations_root_name",
            sqlite_where=sa.text("parent_id IS NULL"),
            postgresql_where=sa.text("parent_id IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_organizations_root_id"))

    op.drop_table("organizations")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_org_at")
        batch_op.drop_index("ix_audit_at")

    op.drop_table("audit_events")
