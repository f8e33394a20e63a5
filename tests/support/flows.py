"""Test helpers that drive Twofold through its own services and API, never around them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.domain.entities import Exemption, Organization, User
from twofold.services.context import RequestContext

from .methods import METHOD_TYPE

ADMIN_PASSWORD = "correct horse battery staple"
USER_PASSWORD = "a long and unusual passphrase"
SERVICE_PASSWORD = "service account passphrase 42"


@dataclass
class Account:
    user: User
    password: str
    code: str | None = None  # the test method's code once enrolled
    token: str | None = None  # a session token once signed in


def create_organization(twofold: Twofold, name: str = "Acme", admin: str = "alice") -> tuple[Organization, Account]:
    organization, created = twofold.accounts.init_organization(
        organization_name=name, admin_username=admin, admin_email=f"{admin}@example.com", admin_password=ADMIN_PASSWORD
    )
    return organization, Account(created.user, ADMIN_PASSWORD)


def create_user(
    twofold: Twofold,
    organization: Organization,
    username: str,
    *,
    kind: str = "user",
    service_type: str | None = None,
    password: str | None = None,
) -> Account:
    password = password or (SERVICE_PASSWORD if kind == "service" else USER_PASSWORD)
    created = twofold.accounts.create_user(
        organization_id=organization.id,
        username=username,
        email=f"{username}@example.com",
        kind=kind,
        service_type=service_type,
        password=password,
        actor_id=None,
        context=RequestContext(ip="127.0.0.1"),
    )
    return Account(created.user, password)


def login(client: Any, account: Account, password: str | None = None) -> Any:
    return client.post(
        "/api/v1/login", json={"username": account.user.username, "password": password or account.password}
    )


def enroll(client: Any, account: Account) -> Account:
    """Password step, then the forced enrollment of the test method; returns the account signed in."""
    response = login(client, account)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "enrollment_required", body
    started = client.post(
        "/api/v1/login/enroll", json={"transaction": body["transaction"], "type": METHOD_TYPE, "name": "Test code"}
    )
    assert started.status_code == 200, started.text
    account.code = started.json()["code"]
    done = client.post(
        "/api/v1/login/enroll/complete",
        json={
            "transaction": body["transaction"],
            "enrollment_id": started.json()["enrollment_id"],
            "code": account.code,
        },
    )
    assert done.status_code == 200, done.text
    account.token = done.json()["token"]
    return account


def sign_in(client: Any, account: Account) -> str:
    """Password + the test method: a full MFA session token."""
    response = login(client, account)
    assert response.status_code == 200, response.text
    transaction = response.json()["transaction"]
    verified = client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": METHOD_TYPE, "code": account.code}
    )
    assert verified.status_code == 200, verified.text
    account.token = verified.json()["token"]
    return str(account.token)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def exempt(twofold: Twofold, account: Account, *, days: int = 90) -> None:
    """Put an account on the local identity provider's exempt list (the exemption API comes later)."""
    with twofold.uow() as uow:
        provider = uow.identity_providers.local_for(account.user.organization_id)
        assert provider is not None
        uow.session.add(  # type: ignore[attr-defined]
            Exemption(
                identity_provider_id=provider.id, user_id=account.user.id, expires_at=utcnow() + timedelta(days=days)
            )
        )


def mfa_failures(twofold: Twofold, account: Account) -> int:
    """The account's consecutive second-factor failures, as the throttle counts them."""
    with twofold.uow(read_only=True) as uow:
        return twofold.throttle.mfa_failures(uow, account.user.id)


def is_locked(twofold: Twofold, account: Account) -> bool:
    with twofold.uow(read_only=True) as uow:
        user = uow.users.get(account.user.id)
        assert user is not None
        return user.locked_at is not None


def run_together(calls: list[Callable[[Any], Any]], new_client: Callable[[], ContextManager[Any]]) -> list[Any]:
    """Run the calls at once, each on its own client (from ``new_client``) and thread, released
    together by a barrier; errors surface in the test's own thread."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        try:
            with new_client() as own_client:
                barrier.wait()
                results[index] = calls[index](own_client)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results
