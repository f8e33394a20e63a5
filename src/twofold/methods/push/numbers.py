"""Number matching against MFA fatigue: the sign-in page shows a two-digit number and the device offers
three, so approving needs a look at the screen that asked (NIST SP 800-63B rev 4 §3.1.7.1)."""

from __future__ import annotations

import secrets

CHOICES = 3


def new_number() -> int:
    return 10 + secrets.randbelow(90)


def choices_for(number: int) -> list[int]:
    picked = {number}
    while len(picked) < CHOICES:
        picked.add(new_number())
    shuffled = list(picked)
    for i in range(len(shuffled) - 1, 0, -1):  # Fisher-Yates with the OS generator
        j = secrets.randbelow(i + 1)
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    return shuffled
