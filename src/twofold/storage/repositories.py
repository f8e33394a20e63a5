"""Repositories implementing the domain ports over one SQLAlchemy session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as OrmSession

from twofold.domain import entities as e
from twofold.domain.clock import utcnow
from twofold.domain.entities import ThrottleState

from . import tables as t


class _Repository:
    def __init__(self, session: OrmSession) -> None:
        self.s = session


class OrganizationRepository(_Repository):
    def add(self, organization: e.Organization) -> None:
        self.s.add(organization)

    def get(self, organization_id: str) -> e.Organization | None:
        return self.s.get(e.Organization, organization_id)

    def get_root_by_name(self, name: str) -> e.Organization | None:
        return self.s.scalars(
            select(e.Organization).where(t.organizations.c.name == name, t.organizations.c.parent_id.is_(None))
        ).first()

    def in_tree(self, root_id: str) -> Sequence[e.Organization]:
        return self.s.scalars(
            select(e.Organization).where(t.organizations.c.root_id == root_id).order_by(t.organizations.c.created_at)
        ).all()


class IdentityProviderRepository(_Repository):
    def add(self, provider: e.IdentityProvider) -> None:
        self.s.add(provider)

    def get(self, provider_id: str) -> e.IdentityProvider | None:
        return self.s.get(e.IdentityProvider, provider_id)

    def local_for(self, organization_id: str) -> e.IdentityProvider | None:
        c = t.identity_providers.c
        return self.s.scalars(
            select(e.IdentityProvider).where(c.organization_id == organization_id, c.type == "local")
        ).first()

    def for_organization(self, organization_id: str) -> Sequence[e.IdentityProvider]:
        c = t.identity_providers.c
        return self.s.scalars(
            select(e.IdentityProvider).where(c.organization_id == organization_id).order_by(c.created_at)
        ).all()

    def all_sealed(self) -> Sequence[e.IdentityProvider]:
        c = t.identity_providers.c
        return self.s.scalars(select(e.IdentityProvider).where(c.settings_encrypted.is_not(None))).all()

    def all_external(self) -> Sequence[e.IdentityProvider]:
        c = t.identity_providers.c
        return self.s.scalars(select(e.IdentityProvider).where(c.type != "local").order_by(c.created_at)).all()

    def delete(self, provider: e.IdentityProvider) -> None:
        self.s.delete(provider)


class UserRepository(_Repository):
    def add(self, user: e.User) -> None:
        self.s.add(user)

    def by_external_subject(self, identity_provider_id: str, subject: str) -> e.User | None:
        c = t.users.c
        return self.s.scalars(
            select(e.User).where(c.identity_provider_id == identity_provider_id, c.external_subject == subject)
        ).first()

    def count_for_provider(self, identity_provider_id: str) -> int:
        c = t.users.c
        return int(self.s.scalar(select(func.count()).where(c.identity_provider_id == identity_provider_id)) or 0)

    def get(self, user_id: str) -> e.User | None:
        return self.s.get(e.User, user_id)

    def get_for_update(self, user_id: str) -> e.User | None:
        # PostgreSQL: a row lock. SQLite: every write unit already holds the database's write lock.
        return self.s.get(e.User, user_id, with_for_update=True, populate_existing=True)

    def by_username_key(self, key: str) -> e.User | None:
        return self.s.scalars(select(e.User).where(t.users.c.username_key == key)).first()

    def page(self, organization_id: str, *, query: str | None, limit: int, after: str | None) -> Sequence[e.User]:
        c = t.users.c
        stmt = select(e.User).where(c.organization_id == organization_id)
        if query:
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            stmt = stmt.where(
                or_(
                    c.username_key.like(pattern.casefold(), escape="\\"),
                    func.lower(c.email).like(pattern.lower(), escape="\\"),
                    func.lower(c.display_name).like(pattern.lower(), escape="\\"),
                )
            )
        if after is not None:
            stmt = stmt.where(c.username_key > after)
        return self.s.scalars(stmt.order_by(c.username_key).limit(limit)).all()

    def all_ids(self) -> Sequence[str]:
        return self.s.scalars(select(t.users.c.id)).all()

    def needing_attention(self, organization_id: str) -> Sequence[e.User]:
        """Locked or disabled accounts, holders of an authenticator flagged as cloned, and users who denied
        a push as "this wasn't me"."""
        c, m = t.users.c, t.verification_methods.c
        cloned = select(m.user_id).where(m.cloned_at.is_not(None), m.status == e.MethodStatus.ACTIVE.value)
        not_me = select(t.push_challenges.c.user_id).where(t.push_challenges.c.not_me.is_(True))
        return self.s.scalars(
            select(e.User)
            .where(
                c.organization_id == organization_id,
                or_(
                    c.locked_at.is_not(None),
                    c.status != e.UserStatus.ACTIVE.value,
                    c.id.in_(cloned),
                    c.id.in_(not_me),
                ),
            )
            .order_by(c.username_key)
        ).all()

    def mfa_facts(self, organization_id: str) -> Sequence[e.UserMfaFacts]:
        """One light row per user (no ORM objects): what the coverage report and the exemption candidates
        need, for organizations of tens of thousands of users."""
        c, m, x = t.users.c, t.verification_methods.c, t.exemptions.c
        has_method = (
            select(m.id).where(m.user_id == c.id, m.status == e.MethodStatus.ACTIVE.value).exists().label("has_method")
        )
        rows = self.s.execute(
            select(
                c.id,
                c.username,
                c.kind,
                c.service_type,
                c.external_subject,
                c.status,
                c.locked_at,
                has_method,
                x.expires_at,
            )
            .select_from(t.users.outerjoin(t.exemptions, x.user_id == c.id))
            .where(c.organization_id == organization_id)
            .order_by(c.username_key)
        ).all()
        return [e.UserMfaFacts(*row) for row in rows]

    def by_ids(self, user_ids: Sequence[str]) -> dict[str, e.User]:
        if not user_ids:
            return {}
        rows = self.s.scalars(select(e.User).where(t.users.c.id.in_(list(user_ids)))).all()
        return {row.id: row for row in rows}


class PermissionRepository(_Repository):
    def add(self, permission: e.Permission) -> None:
        self.s.add(permission)

    def find(self, user_id: str, organization_id: str, name: str) -> e.Permission | None:
        c = t.permissions.c
        return self.s.scalars(
            select(e.Permission).where(c.user_id == user_id, c.organization_id == organization_id, c.name == name)
        ).first()

    def delete(self, permission: e.Permission) -> None:
        self.s.delete(permission)

    def for_user(self, user_id: str) -> Sequence[e.Permission]:
        return self.s.scalars(select(e.Permission).where(t.permissions.c.user_id == user_id)).all()

    def holders(self, organization_id: str, name: str, *, lock: bool = False) -> Sequence[str]:
        c = t.permissions.c
        stmt = select(c.user_id).where(c.organization_id == organization_id, c.name == name)
        if lock:
            # PostgreSQL: row locks, so two revocations cannot both see "another holder remains".
            # SQLite: every write unit already holds the database's write lock.
            stmt = stmt.with_for_update()
        return self.s.scalars(stmt).all()


class ExemptionRepository(_Repository):
    def for_user(self, user_id: str) -> e.Exemption | None:
        return self.s.scalars(select(e.Exemption).where(t.exemptions.c.user_id == user_id)).first()

    def for_users(self, user_ids: Sequence[str]) -> dict[str, e.Exemption]:
        if not user_ids:
            return {}
        rows = self.s.scalars(select(e.Exemption).where(t.exemptions.c.user_id.in_(list(user_ids)))).all()
        return {row.user_id: row for row in rows}

    def for_provider(self, identity_provider_id: str) -> Sequence[e.Exemption]:
        c = t.exemptions.c
        return self.s.scalars(
            select(e.Exemption).where(c.identity_provider_id == identity_provider_id).order_by(c.exempted_at)
        ).all()

    def add(self, exemption: e.Exemption) -> None:
        self.s.add(exemption)

    def delete(self, exemption: e.Exemption) -> None:
        self.s.delete(exemption)


class MethodRepository(_Repository):
    def add(self, record: e.VerificationMethodRecord) -> None:
        self.s.add(record)

    def get(self, method_id: str) -> e.VerificationMethodRecord | None:
        return self.s.get(e.VerificationMethodRecord, method_id)

    def active_for_user(self, user_id: str) -> Sequence[e.VerificationMethodRecord]:
        c = t.verification_methods.c
        return self.s.scalars(
            select(e.VerificationMethodRecord)
            .where(c.user_id == user_id, c.status == e.MethodStatus.ACTIVE.value)
            .order_by(c.created_at)
        ).all()

    def active_for_users(self, user_ids: Sequence[str]) -> dict[str, list[e.VerificationMethodRecord]]:
        found: dict[str, list[e.VerificationMethodRecord]] = {uid: [] for uid in user_ids}
        if not user_ids:
            return found
        c = t.verification_methods.c
        rows = self.s.scalars(
            select(e.VerificationMethodRecord)
            .where(c.user_id.in_(list(user_ids)), c.status == e.MethodStatus.ACTIVE.value)
            .order_by(c.created_at)
        ).all()
        for row in rows:
            found[row.user_id].append(row)
        return found

    def count_active(self, user_id: str) -> int:
        c = t.verification_methods.c
        return int(
            self.s.scalar(select(func.count()).where(c.user_id == user_id, c.status == e.MethodStatus.ACTIVE.value))
            or 0
        )

    def by_lookup_key(self, lookup_key: str) -> e.VerificationMethodRecord | None:
        c = t.verification_methods.c
        # No autoflush: the caller may hold a record that is about to take this very key.
        with self.s.no_autoflush:
            return self.s.scalars(select(e.VerificationMethodRecord).where(c.lookup_key == lookup_key)).first()

    def delete(self, record: e.VerificationMethodRecord) -> None:
        self.s.delete(record)

    def delete_all_for_user(self, user_id: str) -> Sequence[e.VerificationMethodRecord]:
        """Every method of the user, active or pending (R7 reset); returns what was deleted."""
        records = self.s.scalars(
            select(e.VerificationMethodRecord).where(t.verification_methods.c.user_id == user_id)
        ).all()
        for record in records:
            self.s.delete(record)
        self.s.flush()
        return records

    def count_active_by_type(self, organization_id: str) -> dict[str, tuple[int, int]]:
        """Per method type: (active methods, users holding one) in an organization."""
        m, u = t.verification_methods.c, t.users.c
        rows = self.s.execute(
            select(m.type, func.count(), func.count(func.distinct(m.user_id)))
            .select_from(t.verification_methods.join(t.users, u.id == m.user_id))
            .where(u.organization_id == organization_id, m.status == e.MethodStatus.ACTIVE.value)
            .group_by(m.type)
        ).all()
        return {row[0]: (int(row[1]), int(row[2])) for row in rows}

    def all_sealed(self) -> Sequence[e.VerificationMethodRecord]:
        c = t.verification_methods.c
        return self.s.scalars(select(e.VerificationMethodRecord).where(c.payload_encrypted.is_not(None))).all()

    def _update_one(self, *where: Any, **values: Any) -> bool:
        # An ORM-enabled UPDATE, so that records already loaded in this session see the new values.
        result: Any = self.s.execute(
            update(e.VerificationMethodRecord)
            .where(*where)
            .values(**values)
            .execution_options(synchronize_session="fetch")
        )
        return int(result.rowcount or 0) == 1

    def advance_counter(self, method_id: str, counter: int, *, now: datetime) -> bool:
        # A Core UPDATE: the hot path of every TOTP verification, so no ORM synchronization; a record
        # already loaded in this session keeps its old counter, which nothing reads after a success.
        c = t.verification_methods.c
        result: Any = self.s.execute(
            update(t.verification_methods)
            .where(
                c.id == method_id,
                c.status == e.MethodStatus.ACTIVE.value,
                or_(c.counter.is_(None), c.counter < counter),
            )
            .values(counter=counter, last_used_at=now)
        )
        return int(result.rowcount or 0) == 1

    def mark_cloned(self, method_id: str, *, now: datetime) -> None:
        c = t.verification_methods.c
        self.s.execute(
            update(t.verification_methods).where(c.id == method_id, c.cloned_at.is_(None)).values(cloned_at=now)
        )

    def activate(self, method_id: str, *, counter: int | None, now: datetime) -> bool:
        c = t.verification_methods.c
        return self._update_one(
            c.id == method_id,
            c.status == e.MethodStatus.PENDING.value,
            status=e.MethodStatus.ACTIVE.value,
            counter=counter,
            expires_at=None,
            login_transaction_id=None,
            last_used_at=now,
        )


class ChallengeRepository(_Repository):
    def add(self, challenge: e.Challenge) -> None:
        self.s.add(challenge)

    def count_open(self, *, login_transaction_id: str | None, session_id: str | None, now: datetime) -> int:
        c = t.challenges.c
        bound = (
            c.login_transaction_id == login_transaction_id
            if login_transaction_id is not None
            else c.session_id == session_id
        )
        return int(self.s.scalar(select(func.count()).where(bound, c.used_at.is_(None), c.expires_at > now)) or 0)

    def consume(
        self,
        challenge_hash: str,
        *,
        user_id: str,
        login_transaction_id: str | None,
        session_id: str | None,
        now: datetime,
    ) -> e.Challenge | None:
        c = t.challenges.c
        bound = (
            c.login_transaction_id == login_transaction_id
            if login_transaction_id is not None
            else c.session_id == session_id
        )
        self.s.flush()
        row = self.s.execute(
            select(c.id, c.method_type).where(
                c.challenge_hash == challenge_hash, c.user_id == user_id, bound, c.used_at.is_(None), c.expires_at > now
            )
        ).first()
        if row is None:
            return None
        # The conditional UPDATE decides between parallel submissions of one response: one wins.
        result: Any = self.s.execute(
            update(t.challenges).where(c.id == row.id, c.used_at.is_(None)).values(used_at=now)
        )
        if int(result.rowcount or 0) != 1:
            return None
        return e.Challenge(
            id=row.id,
            user_id=user_id,
            challenge_hash=challenge_hash,
            expires_at=now,
            login_transaction_id=login_transaction_id,
            session_id=session_id,
            method_type=row.method_type,
            used_at=now,
        )


class PushChallengeRepository(_Repository):
    def add(self, challenge: e.PushChallenge) -> None:
        self.s.add(challenge)

    def get(self, challenge_id: str) -> e.PushChallenge | None:
        return self.s.get(e.PushChallenge, challenge_id) if isinstance(challenge_id, str) else None

    def for_device(self, user_id: str, device_id: str, *, now: datetime) -> Sequence[e.PushChallenge]:
        """Open challenges a device may answer: the user's, unanswered, unexpired, for it or any device."""
        c = t.push_challenges.c
        return self.s.scalars(
            select(e.PushChallenge)
            .where(
                c.user_id == user_id,
                c.status == e.PushStatus.PENDING.value,
                c.expires_at > now,
                or_(c.method_id.is_(None), c.method_id == device_id),
            )
            .order_by(c.created_at)
        ).all()

    def created_since(self, user_id: str, since: datetime) -> Sequence[datetime]:
        c = t.push_challenges.c
        return self.s.scalars(
            select(c.created_at).where(c.user_id == user_id, c.created_at > since).order_by(c.created_at)
        ).all()

    def decide(
        self,
        challenge_id: str,
        *,
        status: str,
        decided_by: str,
        now: datetime,
        not_me: bool = False,
        wrong_number: bool = False,
    ) -> bool:
        """Record the one answer a challenge gets: a conditional UPDATE, so that of two answers (two
        devices, or a replay) exactly one counts."""
        c = t.push_challenges.c
        result: Any = self.s.execute(
            update(t.push_challenges)
            .where(c.id == challenge_id, c.status == e.PushStatus.PENDING.value, c.expires_at > now)
            .values(status=status, decided_by=decided_by, decided_at=now, not_me=not_me, wrong_number=wrong_number)
        )
        return int(result.rowcount or 0) == 1

    def consume_approval(
        self,
        challenge_id: str,
        *,
        user_id: str,
        login_transaction_id: str | None,
        session_id: str | None,
        now: datetime,
    ) -> str | None:
        """Turn an approval into the proof of this login or step-up, once, within two minutes of the
        challenge's expiry (the page posts it at once); returns the approving device."""
        c = t.push_challenges.c
        bound = (
            c.login_transaction_id == login_transaction_id
            if login_transaction_id is not None
            else c.session_id == session_id
        )
        row = self.s.execute(
            select(c.decided_by).where(
                c.id == challenge_id,
                c.user_id == user_id,
                bound,
                c.status == e.PushStatus.APPROVED.value,
                c.expires_at > now - timedelta(minutes=2),
            )
        ).first()
        if row is None:
            return None
        result: Any = self.s.execute(
            update(t.push_challenges)
            .where(c.id == challenge_id, c.status == e.PushStatus.APPROVED.value)
            .values(status=e.PushStatus.USED.value)
        )
        return str(row.decided_by) if int(result.rowcount or 0) == 1 else None

    def users_with_not_me(self, user_ids: Sequence[str]) -> set[str]:
        if not user_ids:
            return set()
        c = t.push_challenges.c
        return set(
            self.s.scalars(select(func.distinct(c.user_id)).where(c.user_id.in_(list(user_ids)), c.not_me.is_(True)))
        )


class ConnectedAppRepository(_Repository):
    def add(self, app: e.ConnectedApp) -> None:
        self.s.add(app)

    def get(self, app_id: str) -> e.ConnectedApp | None:
        return self.s.get(e.ConnectedApp, app_id) if isinstance(app_id, str) else None

    def by_client_id(self, client_id: str) -> e.ConnectedApp | None:
        return self.s.scalars(select(e.ConnectedApp).where(t.connected_apps.c.client_id == client_id)).first()

    def for_organization(self, organization_id: str) -> Sequence[e.ConnectedApp]:
        c = t.connected_apps.c
        return self.s.scalars(
            select(e.ConnectedApp).where(c.organization_id == organization_id).order_by(c.created_at)
        ).all()

    def delete(self, app: e.ConnectedApp) -> None:
        self.s.delete(app)


class ClientSecretRepository(_Repository):
    def add(self, secret: e.ClientSecret) -> None:
        self.s.add(secret)

    def matching(self, app_id: str, digests: Sequence[str], *, now: datetime) -> e.ClientSecret | None:
        """The app's live secret among these digests (one per configured server key)."""
        c = t.client_secrets.c
        return self.s.scalars(
            select(e.ClientSecret).where(
                c.app_id == app_id,
                c.digest.in_(list(digests)),
                or_(c.expires_at.is_(None), c.expires_at > now),
            )
        ).first()

    def replace_digest(self, old_digest: str, new_digest: str) -> None:
        c = t.client_secrets.c
        self.s.execute(update(t.client_secrets).where(c.digest == old_digest).values(digest=new_digest))

    def live_for_app(self, app_id: str, *, now: datetime) -> Sequence[e.ClientSecret]:
        c = t.client_secrets.c
        return self.s.scalars(
            select(e.ClientSecret)
            .where(c.app_id == app_id, or_(c.expires_at.is_(None), c.expires_at > now))
            .order_by(c.created_at)
        ).all()


class AuthorizationCodeRepository(_Repository):
    def add(self, code: e.AuthorizationCode) -> None:
        self.s.add(code)

    def by_hash(self, code_hash: str) -> e.AuthorizationCode | None:
        return self.s.get(e.AuthorizationCode, code_hash)

    def expire_unredeemed(self, user_id: str, app_id: str, *, now: datetime) -> int:
        c = t.authorization_codes.c
        result: Any = self.s.execute(
            update(t.authorization_codes)
            .where(c.user_id == user_id, c.app_id == app_id, c.used_at.is_(None), c.expires_at > now)
            .values(expires_at=now)
        )
        return int(result.rowcount or 0)

    def redeem(self, code_hash: str, *, now: datetime) -> bool:
        """Once: of two redemptions of one code, exactly one changes the row."""
        c = t.authorization_codes.c
        result: Any = self.s.execute(
            update(t.authorization_codes)
            .where(c.code_hash == code_hash, c.used_at.is_(None), c.expires_at > now)
            .values(used_at=now)
        )
        return int(result.rowcount or 0) == 1


class RefreshTokenRepository(_Repository):
    def add(self, token: e.RefreshToken) -> None:
        self.s.add(token)

    def by_hash(self, token_hash: str) -> e.RefreshToken | None:
        return self.s.get(e.RefreshToken, token_hash)

    def rotate(self, token_hash: str, *, now: datetime) -> bool:
        """Spend a refresh token, once (conditional UPDATE)."""
        c = t.refresh_tokens.c
        result: Any = self.s.execute(
            update(t.refresh_tokens)
            .where(c.token_hash == token_hash, c.used_at.is_(None), c.revoked_at.is_(None), c.expires_at > now)
            .values(used_at=now)
        )
        return int(result.rowcount or 0) == 1

    def revoke_family(self, family_id: str, *, now: datetime) -> int:
        c = t.refresh_tokens.c
        result: Any = self.s.execute(
            update(t.refresh_tokens).where(c.family_id == family_id, c.revoked_at.is_(None)).values(revoked_at=now)
        )
        return int(result.rowcount or 0)

    def revoke_for_user(self, user_id: str, *, now: datetime, app_id: str | None = None) -> int:
        c = t.refresh_tokens.c
        where = [c.user_id == user_id, c.revoked_at.is_(None)] + ([c.app_id == app_id] if app_id else [])
        result: Any = self.s.execute(update(t.refresh_tokens).where(*where).values(revoked_at=now))
        return int(result.rowcount or 0)


class SsoRequestRepository(_Repository):
    def add(self, request: e.SsoRequest) -> None:
        self.s.add(request)

    def by_state_hash(self, state_hash: str) -> e.SsoRequest | None:
        return self.s.get(e.SsoRequest, state_hash)

    def use(self, state_hash: str, *, now: datetime) -> bool:
        """Spend a pending sign-in once (conditional UPDATE): a second callback with its state finds it used."""
        c = t.sso_requests.c
        result: Any = self.s.execute(
            update(t.sso_requests)
            .where(c.state_hash == state_hash, c.used_at.is_(None), c.expires_at > now)
            .values(used_at=now)
        )
        return int(result.rowcount or 0) == 1

    def delete_expired(self, *, now: datetime) -> int:
        result: Any = self.s.execute(delete(t.sso_requests).where(t.sso_requests.c.expires_at <= now))
        return int(result.rowcount or 0)


class ConsentRepository(_Repository):
    def get(self, user_id: str, app_id: str, *, lock: bool = False) -> e.Consent | None:
        # FOR UPDATE on PostgreSQL (SQLite has one writer at a time): a withdrawal and a token issued on the
        # consent's strength are serialized, so no refresh token outlives the withdrawal.
        return self.s.get(e.Consent, (user_id, app_id), with_for_update=lock or None)

    def for_app(self, app_id: str) -> Sequence[e.Consent]:
        return self.s.scalars(select(e.Consent).where(t.oauth_consents.c.app_id == app_id)).all()

    def add(self, consent: e.Consent) -> None:
        self.s.add(consent)

    def delete(self, consent: e.Consent) -> None:
        self.s.delete(consent)

    def for_user(self, user_id: str) -> Sequence[e.Consent]:
        c = t.oauth_consents.c
        return self.s.scalars(select(e.Consent).where(c.user_id == user_id).order_by(c.granted_at)).all()



class SigningKeyRepository(_Repository):
    def add(self, key: e.SigningKey) -> None:
        self.s.add(key)

    def all(self) -> Sequence[e.SigningKey]:
        return self.s.scalars(select(e.SigningKey).order_by(t.signing_keys.c.created_at.desc())).all()

    def delete(self, key: e.SigningKey) -> None:
        self.s.delete(key)

    def delete_retired_before(self, moment: datetime) -> int:
        c = t.signing_keys.c
        result: Any = self.s.execute(delete(t.signing_keys).where(c.retired_at.is_not(None), c.retired_at < moment))
        return int(result.rowcount or 0)


class DeviceRequestIdRepository(_Repository):
    def remember(self, jti_hash: str, *, expires_at: datetime) -> bool:
        """True the first time a request id is seen; False for a replay (in any process)."""
        try:
            with self.s.begin_nested():
                self.s.execute(insert(t.device_request_ids).values(jti_hash=jti_hash, expires_at=expires_at))
        except IntegrityError:
            return False
        return True


class RecoveryCodeRepository(_Repository):
    def replace_for_user(self, user_id: str, code_hashes: Sequence[str]) -> None:
        self.delete_for_user(user_id)
        for code_hash in code_hashes:
            self.s.add(e.RecoveryCode(user_id=user_id, code_hash=code_hash))

    def count_unused(self, user_id: str) -> int:
        c = t.recovery_codes.c
        return int(self.s.scalar(select(func.count()).where(c.user_id == user_id, c.used_at.is_(None))) or 0)

    def has_set(self, user_id: str) -> bool:
        c = t.recovery_codes.c
        return self.s.scalar(select(c.id).where(c.user_id == user_id).limit(1)) is not None

    def consume(self, user_id: str, code_hash: str, *, now: datetime) -> bool:
        c = t.recovery_codes.c
        result: Any = self.s.execute(
            update(t.recovery_codes)
            .where(c.user_id == user_id, c.code_hash == code_hash, c.used_at.is_(None))
            .values(used_at=now)
        )
        return int(result.rowcount or 0) == 1

    def delete_for_user(self, user_id: str) -> int:
        self.s.flush()
        result: Any = self.s.execute(delete(t.recovery_codes).where(t.recovery_codes.c.user_id == user_id))
        return int(result.rowcount or 0)


class TransactionRepository(_Repository):
    def add(self, transaction: e.LoginTransaction) -> None:
        self.s.add(transaction)

    def by_token_hash(self, token_hash: str) -> e.LoginTransaction | None:
        return self.s.scalars(select(e.LoginTransaction).where(t.login_transactions.c.token_hash == token_hash)).first()

    def claim_attempt(self, transaction_id: str, *, now: datetime, maximum: int) -> int | None:
        c = t.login_transactions.c
        count = self.s.execute(
            update(t.login_transactions)
            .where(
                c.id == transaction_id,
                c.ended_at.is_(None),
                c.expires_at > now,
                c.failed_attempts < maximum,
            )
            .values(failed_attempts=c.failed_attempts + 1)
            .returning(c.failed_attempts)
        ).scalar()
        self._refresh(transaction_id)
        return None if count is None else int(count)

    def release_attempt(self, transaction_id: str) -> None:
        """Give back a claimed attempt whose proof turned out to be still on its way (a push pairing)."""
        c = t.login_transactions.c
        self.s.execute(
            update(t.login_transactions)
            .where(c.id == transaction_id, c.failed_attempts > 0)
            .values(failed_attempts=c.failed_attempts - 1)
        )
        self._refresh(transaction_id)

    def end(self, transaction_id: str, *, now: datetime) -> None:
        c = t.login_transactions.c
        self.s.execute(
            update(t.login_transactions).where(c.id == transaction_id, c.ended_at.is_(None)).values(ended_at=now)
        )
        self._refresh(transaction_id)

    def end_all_for_user(self, user_id: str, *, now: datetime, except_id: str | None = None) -> int:
        c = t.login_transactions.c
        stmt = update(t.login_transactions).where(c.user_id == user_id, c.ended_at.is_(None))
        if except_id:
            stmt = stmt.where(c.id != except_id)
        result: Any = self.s.execute(stmt.values(ended_at=now))
        for loaded in list(self.s.identity_map.values()):
            if isinstance(loaded, e.LoginTransaction) and loaded.user_id == user_id:
                self.s.expire(loaded)
        return int(result.rowcount or 0)

    def _refresh(self, transaction_id: str) -> None:
        loaded = self.s.identity_map.get(self.s.identity_key(e.LoginTransaction, transaction_id))
        if loaded is not None:
            self.s.expire(loaded)


class SessionRepository(_Repository):
    def add(self, session: e.Session) -> None:
        self.s.add(session)

    def by_token_hash(self, token_hash: str) -> e.Session | None:
        return self.s.scalars(select(e.Session).where(t.sessions.c.token_hash == token_hash)).first()

    def get(self, session_id: str) -> e.Session | None:
        return self.s.get(e.Session, session_id) if isinstance(session_id, str) else None

    def touch(self, session_id: str, *, now: datetime) -> None:
        self.s.execute(update(t.sessions).where(t.sessions.c.id == session_id).values(last_seen_at=now))

    def revoke(self, session_id: str, *, now: datetime) -> None:
        c = t.sessions.c
        self.s.execute(update(t.sessions).where(c.id == session_id, c.revoked_at.is_(None)).values(revoked_at=now))

    def revoke_all_for_user(self, user_id: str, *, now: datetime, except_id: str | None = None) -> int:
        c = t.sessions.c
        stmt = update(t.sessions).where(c.user_id == user_id, c.revoked_at.is_(None))
        if except_id:
            stmt = stmt.where(c.id != except_id)
        result: Any = self.s.execute(stmt.values(revoked_at=now))
        return int(result.rowcount or 0)


class OneTimeTokenRepository(_Repository):
    def add(self, token: e.OneTimeToken) -> None:
        self.s.add(token)

    def by_hash(self, token_hash: str) -> e.OneTimeToken | None:
        return self.s.scalars(select(e.OneTimeToken).where(t.one_time_tokens.c.token_hash == token_hash)).first()

    def redeem(self, token_id: str, *, now: datetime) -> bool:
        c = t.one_time_tokens.c
        result: Any = self.s.execute(
            update(t.one_time_tokens)
            .where(c.id == token_id, c.used_at.is_(None), c.expires_at > now)
            .values(used_at=now)
        )
        return bool(result.rowcount)

    def void_for_user(self, user_id: str, purpose: str, *, now: datetime) -> None:
        c = t.one_time_tokens.c
        self.s.execute(
            update(t.one_time_tokens)
            .where(c.user_id == user_id, c.purpose == purpose, c.used_at.is_(None))
            .values(used_at=now)
        )


class AuditRepository(_Repository):
    def add(self, event: e.AuditEvent) -> None:
        self.s.add(event)

    def add_many(self, events: Sequence[e.AuditEvent]) -> None:
        """One multi-row INSERT, without the ORM's per-object bookkeeping (batches of the deferred trail)."""
        if events:
            columns = ("id", "organization_id", "at", "type", "actor_id", "subject_id", "ip", "details")
            # A batch retried after a commit whose outcome was unknown (the connection dropped) may be partly
            # there already: rows are skipped by id, so the retry neither fails for ever nor writes twice.
            dialect = self.s.get_bind().dialect.name
            upsert = postgresql_insert if dialect == "postgresql" else sqlite_insert
            statement = upsert(t.audit_events).on_conflict_do_nothing(index_elements=["id"])
            self.s.execute(statement, [{name: getattr(ev, name) for name in columns} for ev in events])

    def page(
        self,
        organization_id: str,
        *,
        type: str | None,
        user_id: str | None,
        since: datetime | None,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> Sequence[e.AuditEvent]:
        c = t.audit_events.c
        stmt = select(e.AuditEvent).where(c.organization_id == organization_id)
        if type:
            stmt = stmt.where(c.type == type)
        if user_id:
            stmt = stmt.where(or_(c.actor_id == user_id, c.subject_id == user_id))
        if since:
            stmt = stmt.where(c.at >= since)
        if after:
            at, event_id = after
            stmt = stmt.where(or_(c.at < at, and_(c.at == at, c.id < event_id)))
        return self.s.scalars(stmt.order_by(c.at.desc(), c.id.desc()).limit(limit)).all()


class ThrottleRepository(_Repository):
    def get(self, key: str) -> ThrottleState | None:
        c = t.throttles.c
        row = self.s.execute(select(c.key, c.failures, c.blocked_until, c.window_start).where(c.key == key)).first()
        if row is None:
            return None
        return ThrottleState(row.key, int(row.failures), row.blocked_until, row.window_start)

    def compare_and_set(
        self,
        key: str,
        *,
        expected_failures: int | None,
        failures: int,
        blocked_until: datetime | None,
        window_start: datetime | None,
    ) -> bool:
        c = t.throttles.c
        values = {
            "failures": failures,
            "blocked_until": blocked_until,
            "window_start": window_start,
            "updated_at": utcnow(),
        }
        if expected_failures is None:
            try:
                with self.s.begin_nested():
                    self.s.execute(insert(t.throttles).values(key=key, **values))
            except IntegrityError:
                return False
            return True
        result: Any = self.s.execute(
            update(t.throttles).where(c.key == key, c.failures == expected_failures).values(**values)
        )
        return bool(result.rowcount)

    def delete(self, key: str) -> None:
        self.s.execute(delete(t.throttles).where(t.throttles.c.key == key))


class Housekeeping(_Repository):
    def purge(self, *, now: datetime, audit_before: datetime) -> dict[str, int]:
        counts: dict[str, int] = {}

        def run(name: str, stmt: Any) -> None:
            result: Any = self.s.execute(stmt)
            counts[name] = int(result.rowcount or 0)

        run("login_transactions", delete(t.login_transactions).where(t.login_transactions.c.expires_at < now))
        run(
            "sessions",
            delete(t.sessions).where(or_(t.sessions.c.expires_at < now, t.sessions.c.revoked_at.is_not(None))),
        )
        run(
            "pending_methods",
            delete(t.verification_methods).where(
                t.verification_methods.c.status == e.MethodStatus.PENDING.value,
                t.verification_methods.c.expires_at < now,
            ),
        )
        run("one_time_tokens", delete(t.one_time_tokens).where(t.one_time_tokens.c.expires_at < now))
        run("challenges", delete(t.challenges).where(t.challenges.c.expires_at < now))
        # Push challenges are kept 30 days after they expire: the console shows "this wasn't me" reports.
        run(
            "push_challenges",
            delete(t.push_challenges).where(t.push_challenges.c.expires_at < now - timedelta(days=30)),
        )
        # A used code is kept a day: a second redemption within it still revokes what the first issued.
        stale_codes = now - timedelta(days=1)
        run("device_request_ids", delete(t.device_request_ids).where(t.device_request_ids.c.expires_at < now))
        run(
            "authorization_codes", delete(t.authorization_codes).where(t.authorization_codes.c.expires_at < stale_codes)
        )
        run("refresh_tokens", delete(t.refresh_tokens).where(t.refresh_tokens.c.expires_at < now))
        run("sso_requests", delete(t.sso_requests).where(t.sso_requests.c.expires_at < now))
        # A throttle row matters until its block ends and its window closes; a day later it is history.
        stale = now - timedelta(days=1)
        run(
            "throttles",
            delete(t.throttles).where(
                t.throttles.c.updated_at < stale,
                or_(t.throttles.c.blocked_until.is_(None), t.throttles.c.blocked_until < now),
                ~t.throttles.c.key.like("mfa:%"),
            ),
        )
        run("audit_events", delete(t.audit_events).where(t.audit_events.c.at < audit_before))
        return counts
