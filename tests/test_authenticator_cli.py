"""The reference push companion, `twofold authenticator` (API.md "Command line and configuration"; issue 6), against
a real `twofold serve` with the product's methods: errors go to stderr with a non-zero status and leave the key file
alone; the key file must be readable by its owner only; a command without a challenge id needs exactly one pending
sign-in; `watch` answers with the number typed on its standard input. The sign-in side is the JSON API over HTTP."""

from __future__ import annotations

import codecs
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from twofold.cli.main import main

from .conftest import SECRET_KEY
from .support.flows import Account, create_organization, create_user, login
from .support.servers import ROOT, running_server

SUBCOMMANDS = [[], ["pair"], ["list"], ["approve"], ["deny"], ["watch"]]


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[str]:
    """`twofold serve` as shipped, on the test database (each test fills the emptied tables itself)."""
    env = {"TWOFOLD_DATABASE_URL": database_url, "TWOFOLD_SECRET_KEY": SECRET_KEY, "TWOFOLD_ENV": "prod"}
    with running_server(env) as base_url:
        yield base_url


@pytest.fixture
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


def companion(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`twofold authenticator ARGS` through the command's own entry point; (exit status, stdout, stderr)."""
    status = main(["authenticator", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def start_pairing(api: httpx.Client, account: Account) -> tuple[str, str, str]:
    """Password step, then a push enrollment at the forced enrollment: (transaction, enrollment id, pairing URI)."""
    started = login(api, account)
    assert started.status_code == 200 and started.json()["status"] == "enrollment_required", started.text
    transaction = started.json()["transaction"]
    enrollment = api.post("/api/v1/login/enroll", json={"transaction": transaction, "type": "push", "name": "Phone"})
    assert enrollment.status_code == 200, enrollment.text
    return transaction, enrollment.json()["enrollment_id"], enrollment.json()["pairing_uri"]


def paired(capsys: pytest.CaptureFixture[str], api: httpx.Client, account: Account, store: Path) -> None:
    """The companion paired in ``store`` and the user's enrollment completed by it."""
    transaction, enrollment_id, uri = start_pairing(api, account)
    status, _, err = companion(capsys, "pair", uri, "--store", str(store), "--name", "Test phone")
    assert status == 0, err
    done = api.post("/api/v1/login/enroll/complete", json={"transaction": transaction, "enrollment_id": enrollment_id})
    assert done.status_code == 200 and done.json()["status"] == "authenticated", done.text


def send_push(api: httpx.Client, account: Account) -> tuple[str, str, int]:
    """A new sign-in waiting for the device: (transaction, challenge id, the number its page would show)."""
    started = login(api, account)
    assert started.status_code == 200 and started.json()["status"] == "mfa_required", started.text
    transaction = started.json()["transaction"]
    pushed = api.post("/api/v1/login/push", json={"transaction": transaction})
    assert pushed.status_code == 200, pushed.text
    return transaction, pushed.json()["challenge_id"], pushed.json()["number"]


def verify_push(api: httpx.Client, transaction: str, challenge_id: str) -> httpx.Response:
    return api.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": "push", "challenge_id": challenge_id}
    )


@pytest.mark.parametrize("subcommand", SUBCOMMANDS, ids=lambda words: " ".join(words) or "authenticator")
def test_every_subcommand_has_help(subcommand: list[str]) -> None:
    """`twofold authenticator [COMMAND] --help` exits 0 and prints its usage, as every subcommand must."""
    result = subprocess.run(
        [sys.executable, "-m", "twofold.cli.main", "authenticator", *subcommand, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: twofold authenticator {' '.join(subcommand)}".rstrip()), result.stdout
    if subcommand:
        assert "--store FILE" in result.stdout


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("https://example.com/pair?code=abc", "not a twofold://pair?server=…&code=… URI"),
        ("twofold://pair?code=abc", "not a twofold://pair?server=…&code=… URI"),
        ("twofold://pair?server=http%3A%2F%2Fexample.com", "not a twofold://pair?server=…&code=… URI"),
        ("twofold://pair?server=file%3A%2F%2F%2Fetc&code=abc", "the pairing URI's server is not an http(s) URL"),
    ],
)
def test_pair_refuses_a_uri_that_is_not_a_pairing_link(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, uri: str, message: str
) -> None:
    """A malformed pairing link is refused before any request: exit 2, the reason on stderr, no key file."""
    store = tmp_path / "device.json"
    status, out, err = companion(capsys, "pair", uri, "--store", str(store))
    assert status == 2
    assert err == f"twofold: error: {message}\n"
    assert out == ""
    assert not store.exists()


def test_pair_with_an_unknown_code_is_refused_by_the_server(
    capsys: pytest.CaptureFixture[str], server: str, product_twofold: Any, tmp_path: Path
) -> None:
    """A well-formed link whose code the server does not know: the server's 404 on stderr, no key file."""
    store = tmp_path / "device.json"
    status, _, err = companion(capsys, "pair", f"twofold://pair?server={server}&code=unknown", "--store", str(store))
    assert status == 2
    assert err.startswith("twofold: error: the server answered 404"), err
    assert not store.exists()


def test_pair_refuses_to_replace_a_paired_device_without_force(
    capsys: pytest.CaptureFixture[str], api: httpx.Client, product_twofold: Any, tmp_path: Path
) -> None:
    """A second `pair` into a store that holds a device is refused and leaves the file and the pairing code as they
    were; with --force the same code then pairs a new device into it."""
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    carol = create_user(product_twofold, organization, "carol")
    store = tmp_path / "device.json"
    paired(capsys, api, bob, store)
    before = store.read_bytes()

    _, _, uri = start_pairing(api, carol)
    status, out, err = companion(capsys, "pair", uri, "--store", str(store))
    assert status == 2
    assert err == f"twofold: error: {store} already holds a paired device; use --store for another or --force\n"
    assert out == ""
    assert store.read_bytes() == before

    status, out, err = companion(capsys, "pair", uri, "--store", str(store), "--force")
    assert status == 0, err
    replaced = json.loads(store.read_text())
    assert replaced["device_id"] != json.loads(before)["device_id"]
    assert replaced["device_id"] in out
    assert store.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_readable_by_others_is_refused(
    capsys: pytest.CaptureFixture[str], api: httpx.Client, product_twofold: Any, tmp_path: Path, mode: int
) -> None:
    """The private key must be its owner's alone: with group or world bits set every command refuses the file,
    says which mode it has and how to fix it, and sends nothing."""
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    store = tmp_path / "device.json"
    paired(capsys, api, bob, store)
    assert store.stat().st_mode & 0o777 == 0o600
    transaction, challenge_id, number = send_push(api, bob)
    os.chmod(store, mode)

    expected = f"twofold: error: {store} is readable by others (mode {mode:o}); run chmod 600 on it\n"
    for args in (["list"], ["approve", "--number", str(number)], ["deny"], ["watch"]):
        status, out, err = companion(capsys, *args, "--store", str(store))
        assert (status, err) == (2, expected), args
        assert out == ""
    assert verify_push(api, transaction, challenge_id).status_code == 202  # still unanswered

    os.chmod(store, 0o600)
    status, _, err = companion(capsys, "approve", "--number", str(number), "--store", str(store))
    assert status == 0, err
    assert verify_push(api, transaction, challenge_id).status_code == 200


def test_a_missing_or_foreign_key_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, product_twofold: Any
) -> None:
    """Without a key file the command says to pair first; a file that is not a key file is named as such."""
    missing = tmp_path / "missing.json"
    status, _, err = companion(capsys, "list", "--store", str(missing))
    assert status == 2
    assert err == f"twofold: error: {missing} does not exist: pair first with `twofold authenticator pair URI`\n"

    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"hello": "world"}')
    os.chmod(foreign, 0o600)
    status, _, err = companion(capsys, "approve", "--number", "12", "--store", str(foreign))
    assert status == 2
    assert err == f"twofold: error: {foreign} is not a Twofold Authenticator key file\n"


def test_approve_and_deny_without_a_pending_sign_in(
    capsys: pytest.CaptureFixture[str], api: httpx.Client, product_twofold: Any, tmp_path: Path
) -> None:
    """With nothing waiting, `list` says so (exit 0) while `approve` and `deny` fail with "no sign-in is waiting"."""
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    store = tmp_path / "device.json"
    paired(capsys, api, bob, store)

    assert companion(capsys, "list", "--store", str(store)) == (0, "No sign-in is waiting for this device.\n", "")
    for args in (["approve", "--number", "42"], ["deny"], ["deny", "--not-me"]):
        status, out, err = companion(capsys, *args, "--store", str(store))
        assert status == 2, args
        assert err == "twofold: error: no sign-in is waiting for this device\n"
        assert out == ""


def test_two_pending_sign_ins_must_be_named(
    capsys: pytest.CaptureFixture[str], api: httpx.Client, product_twofold: Any, tmp_path: Path
) -> None:
    """With two sign-ins waiting and no id, `approve` and `deny` answer neither and name both; named, each is
    answered on its own: the approved one signs in, the denied one is refused."""
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    store = tmp_path / "device.json"
    paired(capsys, api, bob, store)
    first_transaction, first, first_number = send_push(api, bob)
    second_transaction, second, _ = send_push(api, bob)

    for args in (["approve", "--number", str(first_number)], ["deny"]):
        status, _, err = companion(capsys, *args, "--store", str(store))
        assert status == 2, args
        assert err.startswith("twofold: error: several sign-ins are waiting; name one: "), err
        assert first in err and second in err
    assert verify_push(api, first_transaction, first).status_code == 202
    assert verify_push(api, second_transaction, second).status_code == 202

    status, listed, _ = companion(capsys, "list", "--store", str(store))
    assert status == 0
    assert sorted(line.partition(":")[0] for line in listed.splitlines()) == sorted([first, second])

    status, out, err = companion(capsys, "approve", "--number", str(first_number), first, "--store", str(store))
    assert (status, out) == (0, f"Sent approval with number {first_number} for {first}.\n"), err
    status, out, err = companion(capsys, "deny", "--not-me", second, "--store", str(store))
    assert (status, out) == (0, f"Denied {second} and reported it as not you.\n"), err

    signed_in = verify_push(api, first_transaction, first)
    assert signed_in.status_code == 200 and signed_in.json()["amr"] == ["pwd", "swk", "mfa"], signed_in.text
    assert verify_push(api, second_transaction, second).status_code == 401

    # An answered challenge cannot be answered again.
    status, _, err = companion(capsys, "deny", first, "--store", str(store))
    assert status == 2
    assert err.startswith("twofold: error: the server answered 409"), err


class Output:
    """What a child process writes on stdout, gathered by a thread so that a wait for some text has a deadline
    (an interactive prompt ends without a newline: lines cannot be awaited)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.text = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")()  # a character may span two reads
        self._chunks: queue.Queue[bytes] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        while chunk := os.read(stream.fileno(), 4096):
            self._chunks.put(chunk)

    def wait_for(self, wanted: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while wanted not in self.text:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{wanted!r} not in the output so far: {self.text!r}"
            try:
                self.text += self._decoder.decode(self._chunks.get(timeout=remaining))
            except queue.Empty:
                continue
        return self.text


def test_watch_approves_with_the_number_typed_on_its_input(
    capsys: pytest.CaptureFixture[str], api: httpx.Client, product_twofold: Any, tmp_path: Path
) -> None:
    """`watch` long-polls the server, shows a sign-in that starts while it waits with its three numbers, asks which
    number the page shows, and approves with the number read from its standard input; Ctrl-C ends it cleanly."""
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    store = tmp_path / "device.json"
    paired(capsys, api, bob, store)

    watch = subprocess.Popen(
        [sys.executable, "-m", "twofold.cli.main", "authenticator", "watch", "--store", str(store)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert watch.stdin is not None and watch.stdout is not None
        output = Output(watch.stdout)
        output.wait_for("Waiting for sign-ins")
        transaction, challenge_id, number = send_push(api, bob)

        shown = output.wait_for("Which number does the sign-in page show?")
        assert f"{challenge_id}: sign-in to Twofold · {organization.name} from 127.0.0.1" in shown, shown
        choices = shown.rpartition("Which number does the sign-in page show? ")[2].split(" (")[0].split(" / ")
        assert number in [int(choice) for choice in choices] and len(choices) == 3, shown
        assert verify_push(api, transaction, challenge_id).status_code == 202

        watch.stdin.write(f"{number}\n".encode())
        watch.stdin.flush()
        output.wait_for(f"Approved with {number}.")
        signed_in = verify_push(api, transaction, challenge_id)
        assert signed_in.status_code == 200 and signed_in.json()["status"] == "authenticated", signed_in.text

        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=30) == 0
        assert output.wait_for("Stopped.").count(challenge_id) == 1  # shown once, answered once
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
