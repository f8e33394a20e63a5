"""Twofold: identity and access management in which multi-factor authentication is mandatory."""

__version__ = "0.1.0"
