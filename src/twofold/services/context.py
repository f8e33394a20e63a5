"""Who is asking, from where."""

from __future__ import annotations

from dataclasses import dataclass, field

from twofold.domain.entities import ConnectedApp, Session, User


@dataclass(frozen=True)
class RequestContext:
    ip: str | None = None
    user_agent: str | None = None


@dataclass
class Principal:
    """A signed-in user and their session."""

    user: User
    session: Session | None
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def user_id(self) -> str:
        return self.user.id

    @property
    def organization_id(self) -> str:
        return self.user.organization_id


@dataclass(frozen=True)
class AppPrincipal:
    """A connected app acting on its own behalf (an access token of the client-credentials grant): it
    holds the scopes it was granted, in its own organization, and needs no step-up (API.md)."""

    app: ConnectedApp
    scopes: frozenset[str]
    session: None = None

    @property
    def user_id(self) -> str:
        """Audit events name the app as their actor."""
        return self.app.id

    @property
    def organization_id(self) -> str:
        return self.app.organization_id


#: who may call the administration API: an administrator's session, or a connected app's token
Actor = Principal | AppPrincipal
