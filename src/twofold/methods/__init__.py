"""One package per verification method, each implementing ``domain.verification.VerificationMethod``."""
