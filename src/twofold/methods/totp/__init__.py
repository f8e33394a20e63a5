"""Third-party authenticator apps (R8 ``totp``): RFC 6238 time-based one-time passwords."""

from .method import TotpMethod
from .otp import TotpParameters, generate_secret, key_uri, matching_time_step, totp_code

__all__ = ["TotpMethod", "TotpParameters", "generate_secret", "key_uri", "matching_time_step", "totp_code"]
