"""Who is asking, from where."""

from __future__ import annotations

from dataclasses import dataclass, field

from twofold.domain.entities import Session, User


@dataclass(frozen=True)
class RequestContext:
    ip: str | None = None
    user_agent: str | None = None


@dataclass
class Principal:
    """A signed-in user and their session (connected-app principals carry ``scopes`` instead)."""

    user: User
    session: Session | None
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def user_id(self) -> str:
        return self.user.id
