"""A password-only session lives on its exemption (R4): it ends when the exemption expires, when a human's
exemption stops applying at the cut-off, and when the exemption is removed — not 12 hours later."""

from __future__ import annotations

from datetime import date, timedelta

from fastapi.testclient import TestClient

from twofold.domain.clock import utcnow
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.flows import bearer, create_organization, create_user, exempt, login


def password_only_session(client, account) -> str:
    answer = login(client, account).json()
    assert answer["status"] == "authenticated" and answer["amr"] == ["pwd"], answer
    return str(answer["token"])


def test_session_ends_when_the_exemption_expires(twofold, client):
    organization, _ = create_organization(twofold)
    robot = create_user(twofold, organization, "robot", kind="service", service_type="rpa")
    exempt(twofold, robot)
    token = password_only_session(client, robot)
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200

    with twofold.uow() as uow:
        exemption = uow.exemptions.for_user(robot.user.id)
        assert exemption is not None
        exemption.expires_at = utcnow() - timedelta(seconds=1)

    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
    assert login(client, robot).json()["status"] == "enrollment_required"


def test_a_humans_session_ends_at_the_cutoff(make_twofold):
    before_cutoff = make_twofold(user_exemption_cutoff=date.today() + timedelta(days=30))
    organization, _ = create_organization(before_cutoff)
    carol = create_user(before_cutoff, organization, "carol")
    exempt(before_cutoff, carol)
    with TestClient(create_app(before_cutoff, housekeeping=False), base_url=PUBLIC_URL) as client:
        token = password_only_session(client, carol)
        assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200

    # The same database, served after the cut-off: the old exemption no longer applies, nor its session.
    after_cutoff = make_twofold(user_exemption_cutoff=date.today())
    with TestClient(create_app(after_cutoff, housekeeping=False), base_url=PUBLIC_URL) as client:
        assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
        assert login(client, carol).json()["status"] == "enrollment_required"
