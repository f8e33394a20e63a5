"""The Twofold Authenticator companion: pairing, device-signed requests, number-matched push challenges."""

from .method import PushMethod

__all__ = ["PushMethod"]
