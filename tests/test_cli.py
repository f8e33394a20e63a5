"""The `twofold` command and its settings (issue 2 items 2 and 10; API.md "Command line and configuration"):
every subcommand has --help; errors go to stderr with a non-zero status; outside dev mode no server starts
without a real TWOFOLD_SECRET_KEY."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from twofold.config import ConfigurationError, Settings
from twofold.container import build

from .conftest import PUBLIC_URL, SECRET_KEY
from .support.flows import Account, bearer, enroll, login
from .support.servers import free_port
from .test_admin_api import assert_problem

SUBCOMMANDS = [
    [],
    ["serve"],
    ["init"],
    ["users"],
    ["users", "create"],
    ["users", "unlock"],
    ["secrets"],
    ["secrets", "rotate"],
    ["housekeeping"],
]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOFOLD_")}
    return {**env, **extra}


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    return base_env(
        TWOFOLD_DATABASE_URL=database_url,
        TWOFOLD_SECRET_KEY=SECRET_KEY,
        TWOFOLD_PUBLIC_URL=PUBLIC_URL,
        TWOFOLD_ENV="prod",
        **extra,
    )


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twofold.cli.main", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_every_subcommand_has_help(tmp_path):
    env = base_env()
    with ThreadPoolExecutor(max_workers=len(SUBCOMMANDS)) as pool:
        results = list(pool.map(lambda args: run([*args, "--help"], env, tmp_path), SUBCOMMANDS))
    for args, result in zip(SUBCOMMANDS, results, strict=True):
        assert result.returncode == 0, (args, result.stderr)
        assert "usage: twofold" in result.stdout, args
        assert result.stderr == ""
    assert "--admin-password" in results[2].stdout
    assert "--service-type" in results[4].stdout
    assert "--workers" in results[1].stdout
    assert not list(tmp_path.iterdir())  # --help touches nothing


def test_no_or_unknown_subcommand_is_an_error(tmp_path):
    for args in ([], ["frobnicate"], ["users"], ["users", "delete", "x"]):
        result = run(args, base_env(), tmp_path)
        assert result.returncode != 0, args
        assert result.stderr.strip(), args


def test_init_with_password_then_login_needs_enrollment(twofold, client, database_url, tmp_path):
    result = run(
        ["init", "--organization", "Acme", "--admin-username", "root", "--admin-email", "root@example.com",
         "--admin-password", "operator chosen passphrase"],
        cli_env(database_url), tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Acme" in result.stdout and "root" in result.stdout
    assert "operator chosen passphrase" not in result.stdout + result.stderr
    assert "/setup/" not in result.stdout
    answer = client.post("/api/v1/login", json={"username": "root", "password": "operator chosen passphrase"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "enrollment_required"
    # The transaction token is not a session.
    assert_problem(client.get("/api/v1/me", headers=bearer(body["transaction"])), 401, "unauthenticated")
    organization = twofold.accounts.root_by_name("Acme")
    assert_problem(client.get(f"/api/v1/organizations/{organization.id}/users", headers=bearer(body["transaction"])),
                   401, "unauthenticated")

    # Running it again for the same name is refused, and creates nothing.
    again = run(
        ["init", "--organization", "Acme", "--admin-username", "other", "--admin-email", "o@example.com",
         "--admin-password", "operator chosen passphrase"],
        cli_env(database_url), tmp_path,
    )
    assert again.returncode != 0
    assert "Acme" in again.stderr and "exists" in again.stderr
    assert again.stdout == ""
    with twofold.uow(read_only=True) as uow:
        assert uow.users.by_username_key("other") is None


def test_init_without_password_prints_a_setup_link(twofold, client, database_url, tmp_path):
    result = run(
        ["init", "--organization", "Initech", "--admin-username", "peter", "--admin-email", "peter@example.com"],
        cli_env(database_url), tmp_path,
    )
    assert result.returncode == 0, result.stderr
    links = [word for word in result.stdout.split() if word.startswith(f"{PUBLIC_URL}/setup/")]
    assert len(links) == 1
    token = links[0].rsplit("/", 1)[1]
    assert client.post("/api/v1/setup", json={"token": token, "password": "peter's own passphrase"}).status_code == 204
    answer = client.post("/api/v1/login", json={"username": "peter", "password": "peter's own passphrase"})
    assert answer.json()["status"] == "enrollment_required"
    # The administrator created by init can administer once enrolled.
    with twofold.uow(read_only=True) as uow:
        peter = uow.users.by_username_key("peter")
    account = enroll(client, Account(peter, "peter's own passphrase"))
    organization = twofold.accounts.root_by_name("Initech")
    users = client.get(f"/api/v1/organizations/{organization.id}/users", headers=bearer(account.token))
    assert users.status_code == 200 and [u["username"] for u in users.json()["items"]] == ["peter"]


def test_init_refuses_bad_input(twofold, database_url, tmp_path):
    env = cli_env(database_url)
    attempts = [
        ["init", "--organization", "Acme", "--admin-username", "root"],  # missing email
        ["init", "--organization", "Acme", "--admin-username", "root", "--admin-email", "not-an-email"],
        ["init", "--organization", "Acme", "--admin-username", "root", "--admin-email", "r@example.com",
         "--admin-password", "short"],
        ["init", "--organization", "   ", "--admin-username", "root", "--admin-email", "r@example.com"],
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda args: run(args, env, tmp_path), attempts))
    for args, result in zip(attempts, results, strict=True):
        assert result.returncode != 0, args
        assert result.stderr.strip(), args
        assert "Traceback" not in result.stderr
    with twofold.uow(read_only=True) as uow:
        assert uow.organizations.get_root_by_name("Acme") is None
        assert uow.users.by_username_key("root") is None


def test_users_create_and_unlock(twofold, client, database_url, tmp_path):
    env = cli_env(database_url)
    assert run(["init", "--organization", "Acme", "--admin-username", "root", "--admin-email", "root@example.com",
                "--admin-password", "operator chosen passphrase"], env, tmp_path).returncode == 0

    human = run(["users", "create", "--organization", "Acme", "--username", "bob", "--email", "bob@example.com",
                 "--kind", "user", "--password", "bob's long passphrase"], env, tmp_path)
    assert human.returncode == 0, human.stderr
    assert "bob" in human.stdout and "/setup/" not in human.stdout
    service = run(["users", "create", "--organization", "Acme", "--username", "robot", "--email", "robot@example.com",
                   "--kind", "service", "--service-type", "rpa"], env, tmp_path)
    assert service.returncode == 0, service.stderr
    assert f"{PUBLIC_URL}/setup/" in service.stdout
    with twofold.uow(read_only=True) as uow:
        bob = uow.users.by_username_key("bob")
        robot = uow.users.by_username_key("robot")
    assert bob is not None and (bob.kind, bob.service_type) == ("user", None)
    assert robot is not None and (robot.kind, robot.service_type) == ("service", "rpa")
    assert login(client, Account(bob, "bob's long passphrase")).json()["status"] == "enrollment_required"

    failures = {
        "bad kind": ["--username", "x1", "--email", "x1@example.com", "--kind", "robot"],
        "missing service type": ["--username", "x2", "--email", "x2@example.com", "--kind", "service"],
        "service type on a human": ["--username", "x3", "--email", "x3@example.com", "--kind", "user",
                                    "--service-type", "rpa"],
        "bad service type": ["--username", "x4", "--email", "x4@example.com", "--kind", "service",
                             "--service-type", "human"],
        "taken username": ["--username", "BOB", "--email", "b2@example.com", "--kind", "user"],
        "short service password": ["--username", "x5", "--email", "x5@example.com", "--kind", "service",
                                   "--service-type", "rpa", "--password", "fourteen chars"],
    }
    failures["unknown organization"] = ["--username", "x6", "--email", "x6@example.com", "--kind", "user"]
    failures["unlock of an unknown user"] = ["nobody"]

    def attempt(name: str) -> subprocess.CompletedProcess[str]:
        if name == "unlock of an unknown user":
            return run(["users", "unlock", *failures[name]], env, tmp_path)
        organization = "Nowhere" if name == "unknown organization" else "Acme"
        return run(["users", "create", "--organization", organization, *failures[name]], env, tmp_path)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(failures, pool.map(attempt, failures), strict=True))
    for name, result in results.items():
        assert result.returncode != 0, name
        assert result.stderr.strip() and "Traceback" not in result.stderr, name
    assert "Nowhere" in results["unknown organization"].stderr
    assert "nobody" in results["unlock of an unknown user"].stderr
    with twofold.uow(read_only=True) as uow:
        assert all(uow.users.by_username_key(f"x{i}") is None for i in range(1, 7))

    unlocked = run(["users", "unlock", "BOB"], env, tmp_path)
    assert unlocked.returncode == 0, unlocked.stderr
    with twofold.uow.engine.connect() as connection:
        row = connection.execute(
            text("SELECT actor_id, details FROM audit_events WHERE type = 'account.unlocked'")
        ).one()
    assert row.actor_id is None and "operator" in str(row.details)


def test_housekeeping_command(twofold, database_url, tmp_path):
    result = run(["housekeeping"], cli_env(database_url), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sessions" in result.stdout


# -- settings -------------------------------------------------------------------------------------


def serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(["serve", "--port", str(free_port())], env, cwd, timeout=30)


def test_server_refuses_to_start_without_a_real_secret_key(tmp_path):
    database = f"sqlite:///{tmp_path / 'twofold.db'}"
    for key in (None, "", "short-key", "changeme"):
        env = base_env(TWOFOLD_ENV="prod", TWOFOLD_DATABASE_URL=database)
        if key is not None:
            env["TWOFOLD_SECRET_KEY"] = key
        result = serve(env, tmp_path)
        assert result.returncode != 0, key
        assert "TWOFOLD_SECRET_KEY" in result.stderr, (key, result.stderr)
        assert "Traceback" not in result.stderr
        assert "serving" not in result.stdout
    # The default environment is prod.
    result = serve(base_env(TWOFOLD_DATABASE_URL=database), tmp_path)
    assert result.returncode != 0 and "TWOFOLD_SECRET_KEY" in result.stderr
    assert not (tmp_path / "var").exists()  # no dev key was made up


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TWOFOLD_PUBLIC_URL", "not a url"),
        ("TWOFOLD_PUBLIC_URL", "ftp://id.example.com"),
        ("TWOFOLD_ENV", "staging"),
        ("TWOFOLD_TRUSTED_PROXIES", "10.0.0.0/8, not-an-address"),
    ],
)
def test_invalid_settings_stop_the_server_with_a_message(tmp_path, name, value):
    env = base_env(TWOFOLD_SECRET_KEY=SECRET_KEY, TWOFOLD_DATABASE_URL=f"sqlite:///{tmp_path / 'twofold.db'}")
    env[name] = value
    result = serve(env, tmp_path)
    assert result.returncode != 0
    assert name in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_settings_refuse_a_missing_or_weak_key_outside_dev_mode():
    for key in (None, "", "x" * 31, "changeme"):
        settings = Settings(_env_file=None, env="prod", secret_key=key)  # type: ignore[call-arg]
        with pytest.raises(ConfigurationError):
            settings.secret_keys()
        with pytest.raises(ConfigurationError):
            build(settings)
    current, old = Settings(  # type: ignore[call-arg]
        _env_file=None, env="prod", secret_key="y" * 32, old_secret_keys=" a-key , ,b-key"
    ).secret_keys()
    assert current == "y" * 32 and old == ["a-key", "b-key"]


def test_dev_mode_starts_without_a_key_and_keeps_one_private(tmp_path):
    env = base_env(TWOFOLD_ENV="dev", TWOFOLD_DATABASE_URL=f"sqlite:///{tmp_path / 'var' / 'twofold.db'}")
    result = run(["init", "--organization", "Demo", "--admin-username", "dev", "--admin-email", "dev@example.com"],
                 env, tmp_path)
    assert result.returncode == 0, result.stderr
    key_file = tmp_path / "var" / "dev-secret-key"
    assert key_file.exists() and len(key_file.read_text().strip()) >= 32
    assert key_file.stat().st_mode & 0o077 == 0
