"""The explicit registry of verification methods. Adding a method type is one package and one line here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from twofold.domain.errors import ValidationFailed
from twofold.domain.verification import VerificationMethod


class MethodRegistry:
    def __init__(self, methods: Iterable[VerificationMethod] = ()) -> None:
        self._by_type: dict[str, VerificationMethod] = {}
        for method in methods:
            self.register(method)

    def register(self, method: VerificationMethod) -> None:
        if method.method_type in self._by_type:
            raise ValueError(f"method type {method.method_type!r} registered twice")
        self._by_type[method.method_type] = method

    def __iter__(self) -> Iterator[VerificationMethod]:
        return iter(self._by_type.values())

    def method(self, method_type: str) -> VerificationMethod:
        try:
            return self._by_type[method_type]
        except KeyError:
            raise ValidationFailed(f"unknown method type {method_type!r}") from None

    def for_verification_type(self, verification_type: str) -> list[VerificationMethod]:
        found = [m for m in self._by_type.values() if m.verification_type == verification_type]
        if not found:
            raise ValidationFailed(f"unknown verification type {verification_type!r}")
        return found

    @property
    def method_types(self) -> list[str]:
        return list(self._by_type)


def default_registry() -> MethodRegistry:
    """The methods this build of Twofold offers."""
    from twofold.methods.push import PushMethod
    from twofold.methods.totp import TotpMethod
    from twofold.methods.webauthn import PlatformAuthenticatorMethod, SecurityKeyMethod

    return MethodRegistry([TotpMethod(), PlatformAuthenticatorMethod(), SecurityKeyMethod(), PushMethod()])
