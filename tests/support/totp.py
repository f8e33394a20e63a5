"""TOTP helpers for tests: codes from Debian's `oathtool` (an implementation independent of ours),
and flows that enroll and sign in with the real ``totp`` method through the API.

A code is single-use: after a code of step t was accepted, the next sign-in uses step t+1 (the server
accepts ±1 step), then waits for the clock rather than reusing a step (DESIGN.md §8).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from .flows import Account, login

PERIOD = 30


def oathtool(secret: str, *, unix_time: float | None = None, digits: int = 6, algorithm: str = "SHA1") -> str:
    """`oathtool --totp -b SECRET` at a given time (default: now)."""
    executable = shutil.which("oathtool")
    assert executable, "Debian's oathtool is required (apt-get install oathtool)"
    moment = time.time() if unix_time is None else unix_time
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(moment)))
    command = [executable, f"--totp={algorithm.lower()}", "-b", f"--digits={digits}", f"--now={stamp}", secret]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def current_step(unix_time: float | None = None) -> int:
    return int((time.time() if unix_time is None else unix_time) // PERIOD)


def code_at_step(secret: str, step: int) -> str:
    return oathtool(secret, unix_time=step * PERIOD + 1)


@dataclass
class TotpAccount:
    """An account with an enrolled authenticator app: its secret, and the last step used for it."""

    account: Account
    secret: str
    last_step: int
    recovery_codes: list[str] = field(default_factory=list)
    token: str | None = None

    def next_code(self) -> str:
        """A code the server has not accepted yet: the next unused step within the ±1 window,
        sleeping until the clock allows one if both are used."""
        step = max(self.last_step + 1, current_step() - 1)
        while step > current_step() + 1:
            time.sleep(0.5)
        self.last_step = step
        return code_at_step(self.secret, step)


def enroll_totp(client: Any, account: Account, *, name: str = "Phone") -> TotpAccount:
    """Password step, then the forced enrollment of an authenticator app; returns it signed in."""
    response = login(client, account)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "enrollment_required", body
    started = client.post(
        "/api/v1/login/enroll", json={"transaction": body["transaction"], "type": "totp", "name": name}
    )
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    step = current_step()
    done = client.post(
        "/api/v1/login/enroll/complete",
        json={
            "transaction": body["transaction"],
            "enrollment_id": started.json()["enrollment_id"],
            "code": code_at_step(secret, step),
        },
    )
    assert done.status_code == 200, done.text
    enrolled = TotpAccount(account, secret, step, recovery_codes=done.json()["recovery_codes"])
    enrolled.token = account.token = done.json()["token"]
    return enrolled


def sign_in_totp(client: Any, enrolled: TotpAccount) -> str:
    """Password + a fresh TOTP code: a full MFA session token."""
    response = login(client, enrolled.account)
    assert response.status_code == 200, response.text
    transaction = response.json()["transaction"]
    verified = client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": "totp", "code": enrolled.next_code()}
    )
    assert verified.status_code == 200, verified.text
    enrolled.token = enrolled.account.token = verified.json()["token"]
    return str(enrolled.token)
