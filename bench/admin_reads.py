"""How the administrators' reads scale: an organization of N users (default 10,000), half of them enrolled,
on an empty database, each read repeated through the app in-process (no network), median and max printed.

    .venv/bin/python bench/admin_reads.py --database-url sqlite:////tmp/admin-reads.db
    .venv/bin/python bench/admin_reads.py --database-url postgresql://postgres@127.0.0.1:5432/bench_admin

The database must be empty (a new SQLite file, or a PostgreSQL database created for the run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.flows import bearer, create_organization, enroll
from tests.support.methods import KnownCodeMethod

from twofold.config import Settings
from twofold.container import build
from twofold.domain.clock import utcnow
from twofold.domain.entities import new_id
from twofold.methods.registry import MethodRegistry
from twofold.storage import tables
from twofold.storage.migrate import upgrade
from twofold.web.app import create_app

READS = [
    "/mfa-report",
    "/attention",
    "/users?limit=50",
    "/users?q=user0999&limit=50",
    "/identity-providers/local/exempt-accounts/candidates",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    upgrade(args.database_url)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, env="prod", database_url=args.database_url, secret_key="b" * 48
    )
    twofold = build(settings, registry=MethodRegistry([KnownCodeMethod()]))
    organization, alice = create_organization(twofold)
    with twofold.uow() as uow:
        provider = uow.identity_providers.local_for(organization.id)
        assert provider is not None
    now = utcnow()
    users, methods = [], []
    for i in range(args.users):
        user_id = new_id()
        name = f"user{i:05d}"
        users.append(
            {
                "id": user_id,
                "organization_id": organization.id,
                "identity_provider_id": provider.id,
                "username": name,
                "username_key": name,
                "email": f"{name}@example.com",
                "kind": "user",
                "status": "active",
                "created_at": now,
            }
        )
        if i % 2 == 0:
            methods.append(
                {
                    "id": new_id(),
                    "user_id": user_id,
                    "type": "test_code",
                    "name": "Test code",
                    "status": "active",
                    "created_at": now,
                }
            )
    with twofold.uow.engine.begin() as connection:
        connection.execute(insert(tables.users), users)
        connection.execute(insert(tables.verification_methods), methods)

    with TestClient(create_app(twofold, housekeeping=False), base_url=settings.public_url) as client:
        enroll(client, alice)
        headers = bearer(alice.token)
        base = f"/api/v1/organizations/{organization.id}"
        print(f"{args.users} users on {settings.database_url.split(':')[0]}")
        for path in READS:
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                answer = client.get(base + path, headers=headers)
                times.append((time.perf_counter() - start) * 1000)
                assert answer.status_code == 200, answer.text
            print(f"  GET …{path:58s} median {statistics.median(times):7.1f} ms   max {max(times):7.1f} ms")
    twofold.close()


if __name__ == "__main__":
    main()
