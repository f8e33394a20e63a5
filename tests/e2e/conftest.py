"""End-to-end fixtures: Debian's Chromium driven by Playwright for Python, and real `twofold serve` servers on the
test database (DESIGN.md §8). `playwright install` is never run: the browser is the system's.

Without /usr/bin/chromium the browser tests are skipped, unless TWOFOLD_REQUIRE_BROWSER=1 (CI), where a missing
browser is a failure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import SECRET_KEY
from ..support.servers import TEST_METHOD_SERVER, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("TWOFOLD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{CHROMIUM} is missing and TWOFOLD_REQUIRE_BROWSER=1", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium, or set TWOFOLD_REQUIRE_BROWSER=1 to fail)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per module (the sync Playwright loop is closed before other modules run)."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browser_context(browser: Any) -> Iterator[Any]:
    """A fresh profile per test: no cookie carries over."""
    context = browser.new_context()
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def kept_tables() -> tuple[str, ...]:
    """The servers of a module outlive its tests and keep the token-signing key in memory for a few seconds
    (services/signing.py); the key is the server's configuration, not a test's data, so it is not emptied."""
    return ("signing_keys",)


def server_env(database_url: str) -> dict[str, str]:
    return {"TWOFOLD_DATABASE_URL": database_url, "TWOFOLD_SECRET_KEY": SECRET_KEY, "TWOFOLD_ENV": "prod"}


@pytest.fixture(scope="module")
def product_server(database_url: str) -> Iterator[str]:
    """`twofold serve` as shipped (the product's method registry), at http://localhost:PORT on the test database.
    Servers are stateless, so one per module and backend serves every test; each test fills the tables itself."""
    with running_server(server_env(database_url)) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def test_method_server(database_url: str) -> Iterator[str]:
    """A real uvicorn server whose registry also holds the test method, to go past the second factor."""
    with running_server(server_env(database_url), command=TEST_METHOD_SERVER) as base_url:
        yield base_url
