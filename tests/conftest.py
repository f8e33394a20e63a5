"""Fixtures: every database-backed test runs on SQLite and, when TWOFOLD_TEST_POSTGRES_URL is set, on
PostgreSQL too. Each backend gets a database of its own, migrated once; each test starts from empty tables."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from twofold.config import Settings
from twofold.container import Twofold, build
from twofold.methods.registry import MethodRegistry, default_registry
from twofold.storage.migrate import upgrade
from twofold.storage.tables import metadata

from .support.databases import postgres_database
from .support.methods import KnownCodeMethod

warnings.filterwarnings("ignore", message=".*httpx2.*")

POSTGRES_URL = os.environ.get("TWOFOLD_TEST_POSTGRES_URL")
BACKENDS = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])
SECRET_KEY = "test-secret-key-that-is-long-enough-0123456789"
PUBLIC_URL = "http://localhost:8000"


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("sqlite") / "twofold.db"
        url = f"sqlite:///{path}"
        upgrade(url)
        yield url
        return
    assert POSTGRES_URL is not None
    with postgres_database(POSTGRES_URL, "twofold_test") as url:
        upgrade(url)
        yield url


@pytest.fixture
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgres"


def empty_tables(database_url: str, keep: tuple[str, ...] = ()) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            names = [table.name for table in reversed(metadata.sorted_tables) if table.name not in keep]
            if engine.dialect.name == "postgresql":
                connection.execute(text("TRUNCATE " + ", ".join(names) + " CASCADE"))
            else:
                for name in names:
                    connection.execute(text(f"DELETE FROM {name}"))
    finally:
        engine.dispose()


def test_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "prod",
        "database_url": database_url,
        "secret_key": SECRET_KEY,
        "public_url": PUBLIC_URL,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def kept_tables() -> tuple[str, ...]:
    """Tables not emptied before a test (tests/e2e keeps the token-signing keys: see there)."""
    return ()


@pytest.fixture
def make_twofold(database_url: str, kept_tables: tuple[str, ...]) -> Iterator[Callable[..., Twofold]]:
    """Build a Twofold on the test database: ``make_twofold(mfa_lock_threshold=5, ...)``."""
    empty_tables(database_url, keep=kept_tables)
    built: list[Twofold] = []

    def factory(*, registry: MethodRegistry | None = None, **overrides: Any) -> Twofold:
        twofold = build(
            test_settings(database_url, **overrides),
            registry=registry if registry is not None else MethodRegistry([KnownCodeMethod()]),
        )
        built.append(twofold)
        return twofold

    yield factory
    for twofold in built:
        twofold.close()


@pytest.fixture
def twofold(make_twofold: Callable[..., Twofold]) -> Twofold:
    return make_twofold()


@pytest.fixture
def client(twofold: Twofold) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from twofold.web.app import create_app

    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL) as test_client:
        yield test_client


@pytest.fixture
def product_twofold(make_twofold: Callable[..., Twofold]) -> Twofold:
    """Twofold with the product's method registry (TOTP and the rest), as `twofold serve` builds it."""
    return make_twofold(registry=default_registry())


@pytest.fixture
def product_client(product_twofold: Twofold) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from twofold.web.app import create_app

    with TestClient(create_app(product_twofold, housekeeping=False), base_url=PUBLIC_URL) as test_client:
        yield test_client
