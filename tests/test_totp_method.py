"""Unit tests of the ``totp`` method and of recovery codes, without a database.

Expected TOTP codes come from outside Twofold: the RFC 6238 Appendix B table, and Debian's
``oathtool`` (an independent implementation). Every test that depends on "now" takes it once, puts
it in the MethodContext and derives all codes from that moment, so step boundaries cannot race.
"""

from __future__ import annotations

import base64
import math
import re
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from twofold.domain.clock import utcnow
from twofold.domain.entities import MethodStatus, Organization, User, UserKind, VerificationMethodRecord
from twofold.domain.errors import VerificationError
from twofold.domain.verification import MethodContext, VerificationResult
from twofold.methods import recovery_codes
from twofold.methods.totp import TotpMethod, TotpParameters, generate_secret, key_uri, matching_time_step, totp_code
from twofold.services.crypto import AesGcmSealer, SealedValueError

from .support.totp import oathtool

PERIOD = 30

# -- RFC 6238 Appendix B ---------------------------------------------------------------------------

# The RFC's seeds: the ASCII digits "1234567890" repeated to 20, 32 and 64 bytes (one per hash).
RFC_SEEDS = {
    "SHA1": b"12345678901234567890",
    "SHA256": b"12345678901234567890123456789012",
    "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
# (time in seconds, algorithm, 8-digit TOTP) as printed in RFC 6238 Appendix B.
RFC_VECTORS = [
    (59, "SHA1", "94287082"),
    (59, "SHA256", "46119246"),
    (59, "SHA512", "90693936"),
    (1111111109, "SHA1", "07081804"),
    (1111111109, "SHA256", "68084774"),
    (1111111109, "SHA512", "25091201"),
    (1111111111, "SHA1", "14050471"),
    (1111111111, "SHA256", "67062674"),
    (1111111111, "SHA512", "99943326"),
    (1234567890, "SHA1", "89005924"),
    (1234567890, "SHA256", "91819424"),
    (1234567890, "SHA512", "93441116"),
    (2000000000, "SHA1", "69279037"),
    (2000000000, "SHA256", "90698825"),
    (2000000000, "SHA512", "38618901"),
    (20000000000, "SHA1", "65353130"),
    (20000000000, "SHA256", "77737706"),
    (20000000000, "SHA512", "47863826"),
]


def _base32(seed: bytes) -> str:
    # Without padding, as secrets travel in Key URIs.
    return base64.b32encode(seed).decode().rstrip("=")


@pytest.mark.parametrize(("unix_time", "algorithm", "expected"), RFC_VECTORS, ids=lambda v: str(v))
def test_rfc6238_appendix_b_vectors(unix_time, algorithm, expected):
    parameters = TotpParameters(algorithm=algorithm, digits=8)
    assert totp_code(_base32(RFC_SEEDS[algorithm]), unix_time=unix_time, parameters=parameters) == expected


def test_rfc6238_seed_with_six_digits():
    # The RFC's 14050471 truncated to 6 digits (mod 10^6), with the leading zero kept.
    assert totp_code(_base32(RFC_SEEDS["SHA1"]), unix_time=1111111111) == "050471"


# -- Agreement with oathtool -----------------------------------------------------------------------

NOW = int(time.time())
STEP_START = NOW // PERIOD * PERIOD
AGREEMENT_TIMES = {
    "now": NOW,
    "past": 1_000_000_000,
    "future": 4_000_000_000,
    "first_second_of_step": STEP_START,
    "last_second_of_step": STEP_START + PERIOD - 1,
    "last_second_of_previous_step": STEP_START - 1,
}
SETTINGS = [("SHA1", 6), ("SHA1", 8), ("SHA256", 6), ("SHA256", 8), ("SHA512", 6), ("SHA512", 8)]


@pytest.mark.parametrize(("algorithm", "digits"), SETTINGS, ids=lambda v: str(v))
def test_codes_agree_with_oathtool(algorithm, digits):
    parameters = TotpParameters(algorithm=algorithm, digits=digits)
    for secret in (generate_secret(), generate_secret(), generate_secret()):
        for label, moment in AGREEMENT_TIMES.items():
            expected = oathtool(secret, unix_time=moment, digits=digits, algorithm=algorithm)
            assert len(expected) == digits
            assert totp_code(secret, unix_time=moment, parameters=parameters) == expected, (label, secret)


def test_codes_agree_with_oathtool_for_the_rfc_seeds():
    # A second, independent check that our base32 handling of padded-length seeds matches oathtool's.
    for algorithm, seed in RFC_SEEDS.items():
        parameters = TotpParameters(algorithm=algorithm, digits=8)
        for moment in (59, 1111111111, NOW):
            expected = oathtool(_base32(seed), unix_time=moment, digits=8, algorithm=algorithm)
            assert totp_code(_base32(seed), unix_time=moment, parameters=parameters) == expected


# -- matching_time_step ----------------------------------------------------------------------------

# A fixed secret and a fixed moment in the middle of its step: these tests give the same answer on every run.
SECRET = _base32(RFC_SEEDS["SHA1"])
MOMENT = 1_700_000_000 // PERIOD * PERIOD + 15
MOMENT_STEP = MOMENT // PERIOD


def _code(secret: str, step: int, *, digits: int = 6, algorithm: str = "SHA1") -> str:
    return oathtool(secret, unix_time=step * PERIOD + 1, digits=digits, algorithm=algorithm)


def test_matching_time_step_accepts_one_step_either_side():
    secret = SECRET
    for offset in (-1, 0, 1):
        code = _code(secret, MOMENT_STEP + offset)
        assert matching_time_step(secret, code, unix_time=MOMENT) == MOMENT_STEP + offset


def test_matching_time_step_refuses_two_steps_away():
    secret = SECRET
    window = {_code(secret, MOMENT_STEP + offset) for offset in (-1, 0, 1)}
    for offset in (-2, 2):
        code = _code(secret, MOMENT_STEP + offset)
        assert code not in window  # true of this secret and moment; otherwise there is nothing to refuse
        assert matching_time_step(secret, code, unix_time=MOMENT) is None


def test_matching_time_step_at_a_step_boundary():
    secret = SECRET
    boundary = MOMENT_STEP * PERIOD  # the first second of MOMENT_STEP
    assert matching_time_step(secret, _code(secret, MOMENT_STEP - 1), unix_time=boundary) == MOMENT_STEP - 1
    assert matching_time_step(secret, _code(secret, MOMENT_STEP + 1), unix_time=boundary) == MOMENT_STEP + 1
    just_before = boundary - 0.001  # still the previous step: its window ends at MOMENT_STEP
    assert matching_time_step(secret, _code(secret, MOMENT_STEP), unix_time=just_before) == MOMENT_STEP
    assert matching_time_step(secret, _code(secret, MOMENT_STEP - 2), unix_time=just_before) == MOMENT_STEP - 2


def test_matching_time_step_after_excludes_used_steps():
    secret = SECRET
    now_code, next_code = _code(secret, MOMENT_STEP), _code(secret, MOMENT_STEP + 1)
    previous_code = _code(secret, MOMENT_STEP - 1)
    assert matching_time_step(secret, now_code, unix_time=MOMENT, after=MOMENT_STEP - 1) == MOMENT_STEP
    assert matching_time_step(secret, now_code, unix_time=MOMENT, after=MOMENT_STEP) is None
    assert matching_time_step(secret, previous_code, unix_time=MOMENT, after=MOMENT_STEP - 1) is None
    assert matching_time_step(secret, next_code, unix_time=MOMENT, after=MOMENT_STEP) == MOMENT_STEP + 1
    assert matching_time_step(secret, next_code, unix_time=MOMENT, after=MOMENT_STEP + 1) is None


def test_matching_time_step_refuses_malformed_codes():
    secret = SECRET
    code = _code(secret, MOMENT_STEP)
    eight_digits = _code(secret, MOMENT_STEP, digits=8)
    malformed = [
        "",
        code[:5],
        code + "0",
        eight_digits,  # the 8-digit code ends with the 6-digit one: still not a 6-digit code
        code[:5] + "a",
        " " + code,
        code.replace(code[0], "x", 1),
        "".join(chr(0x0660 + int(d)) for d in code),  # the same digits in Arabic-Indic script
    ]
    for candidate in malformed:
        assert matching_time_step(secret, candidate, unix_time=MOMENT) is None, candidate
    parameters = TotpParameters(digits=8)
    assert matching_time_step(secret, code, unix_time=MOMENT, parameters=parameters) is None
    assert matching_time_step(secret, eight_digits, unix_time=MOMENT, parameters=parameters) == MOMENT_STEP


def test_parameters_refuse_unsupported_values():
    for kwargs in ({"algorithm": "MD5"}, {"digits": 5}, {"digits": 9}, {"period": 10}, {"period": 121}):
        with pytest.raises(ValueError):
            TotpParameters(**kwargs)


# -- TotpMethod through the VerificationMethod protocol --------------------------------------------


def _context(*, organization: str = "Acme", now: datetime | None = None) -> MethodContext:
    return MethodContext(
        now=now or utcnow(),
        sealer=AesGcmSealer("k" * 40),
        public_url="http://localhost:8000",
        rp_id="localhost",
        organization=Organization(name=organization),
    )


def _user(username: str = "alice") -> User:
    return User(
        organization_id="o",
        identity_provider_id="p",
        username=username,
        username_key=username,
        email=f"{username}@example.com",
        kind=UserKind.USER.value,
    )


def _step(context: MethodContext) -> int:
    return int(context.now.timestamp()) // PERIOD


def _enroll(method: TotpMethod, context: MethodContext, user: User) -> tuple[VerificationMethodRecord, str]:
    """A record enrolled with the current code (its counter set as the service would); and its secret."""
    started = method.begin_enrollment(user=user, name="Phone", context=context)
    secret = started.client_data["secret"]
    result = method.complete_enrollment(
        user=user, record=started.record, proof={"code": _code(secret, _step(context))}, context=context
    )
    started.record.status = MethodStatus.ACTIVE.value
    started.record.counter = result.counter
    return started.record, secret


def _wrong_code(secret: str, step: int) -> str:
    """A 6-digit code that no step of the ±1 window has."""
    window = {_code(secret, step + offset) for offset in (-1, 0, 1)}
    candidate = int(_code(secret, step))
    while f"{candidate:06d}" in window:
        candidate = (candidate + 1) % 1_000_000
    return f"{candidate:06d}"


def test_begin_enrollment_gives_a_fresh_160_bit_secret():
    method, context, user = TotpMethod(), _context(), _user()
    secrets = [
        method.begin_enrollment(user=user, name="Phone", context=context).client_data["secret"] for _ in range(3)
    ]
    for secret in secrets:
        assert len(secret) == 32 and re.fullmatch(r"[A-Z2-7]{32}", secret)
        assert len(base64.b32decode(secret)) == 20
    assert len(set(secrets)) == len(secrets)


def test_otpauth_uri_follows_the_key_uri_format():
    method, context, user = TotpMethod(), _context(), _user()
    data = method.begin_enrollment(user=user, name="Phone", context=context).client_data
    uri = urlsplit(data["otpauth_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert unquote(uri.path) == "/Acme:alice"
    params = {key: values[0] for key, values in parse_qs(uri.query, strict_parsing=True).items()}
    assert params == {"secret": data["secret"], "issuer": "Acme", "algorithm": "SHA1", "digits": "6", "period": "30"}
    assert (data["algorithm"], data["digits"], data["period"]) == ("SHA1", 6, 30)


@pytest.mark.parametrize("organization", ["Acme Labs", "Acme: Labs", "Ünïcode & Co/Ops?", " Spaced "])
def test_otpauth_uri_handles_awkward_organization_names(organization):
    method, context, user = TotpMethod(), _context(organization=organization), _user()
    uri = urlsplit(method.begin_enrollment(user=user, name="Phone", context=context).client_data["otpauth_uri"])
    assert " " not in uri.geturl() and "+" not in uri.path
    # Exactly one colon in the label: the apps split issuer from account there.
    issuer_in_label, account = unquote(uri.path).removeprefix("/").split(":")
    assert account == "alice"
    issuer = parse_qs(uri.query)["issuer"][0]
    assert issuer == issuer_in_label and ":" not in issuer
    assert issuer.strip() == issuer and issuer
    # The organization stays recognisable: its words, with the colon dropped.
    assert issuer.split() == organization.replace(":", " ").split()


def test_key_uri_keeps_a_colon_out_of_the_account_too():
    uri = urlsplit(key_uri("JBSWY3DPEHPK3PXP", account="a:b", issuer="Acme"))
    assert unquote(uri.path).removeprefix("/").split(":") == ["Acme", "a b"]
    parameters = TotpParameters(algorithm="SHA512", digits=8, period=60)
    query = parse_qs(urlsplit(key_uri("JBSWY3DPEHPK3PXP", account="a", issuer="Acme", parameters=parameters)).query)
    assert (query["algorithm"], query["digits"], query["period"]) == (["SHA512"], ["8"], ["60"])


def test_qr_code_is_an_inline_svg():
    method, context, user = TotpMethod(), _context(), _user()
    svg = method.begin_enrollment(user=user, name="Phone", context=context).client_data["qr_svg"]
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<?xml" not in svg and "<title>" in svg


def test_sealed_payload_does_not_contain_the_secret():
    method, context, user = TotpMethod(), _context(), _user()
    started = method.begin_enrollment(user=user, name="Phone", context=context)
    secret, sealed = started.client_data["secret"], started.record.payload_encrypted
    assert sealed and secret not in sealed and secret.lower() not in sealed
    assert started.record.status == MethodStatus.PENDING.value and started.record.counter is None


def test_complete_enrollment_with_the_current_code():
    method, context, user = TotpMethod(), _context(), _user()
    started = method.begin_enrollment(user=user, name="Phone", context=context)
    code = oathtool(started.client_data["secret"], unix_time=context.now.timestamp())
    result = method.complete_enrollment(user=user, record=started.record, proof={"code": code}, context=context)
    assert isinstance(result, VerificationResult)
    assert (result.method_id, result.counter, result.amr) == (started.record.id, _step(context), ("otp",))


def test_complete_enrollment_refuses_a_wrong_code_and_stays_pending():
    method, context, user = TotpMethod(), _context(), _user()
    started = method.begin_enrollment(user=user, name="Phone", context=context)
    wrong = _wrong_code(started.client_data["secret"], _step(context))
    with pytest.raises(VerificationError):
        method.complete_enrollment(user=user, record=started.record, proof={"code": wrong}, context=context)
    assert started.record.status == MethodStatus.PENDING.value and started.record.counter is None


def test_complete_enrollment_refuses_a_secret_it_did_not_seal():
    method, context, user = TotpMethod(), _context(), _user()
    started = method.begin_enrollment(user=user, name="Phone", context=context)
    other = method.begin_enrollment(user=user, name="Phone", context=context)
    # The payload is bound to its record: moved to another record, it does not open.
    other.record.payload_encrypted = started.record.payload_encrypted
    code = _code(started.client_data["secret"], _step(context))
    with pytest.raises(SealedValueError):
        method.complete_enrollment(user=user, record=other.record, proof={"code": code}, context=context)


def test_verify_honours_the_stored_counter():
    method, context, user = TotpMethod(), _context(), _user()
    record, secret = _enroll(method, context, user)
    step = _step(context)
    assert record.counter == step
    for used in (step, step - 1):  # the code just used, and an older one still in the window
        with pytest.raises(VerificationError, match="already used"):
            method.verify(user=user, methods=[record], proof={"code": _code(secret, used)}, context=context)
    result = method.verify(user=user, methods=[record], proof={"code": _code(secret, step + 1)}, context=context)
    assert (result.method_id, result.counter, result.amr) == (record.id, step + 1, ("otp",))
    record.counter = result.counter
    with pytest.raises(VerificationError, match="already used"):
        method.verify(user=user, methods=[record], proof={"code": _code(secret, step + 1)}, context=context)


def test_verify_refuses_a_wrong_code_without_calling_it_used():
    method, context, user = TotpMethod(), _context(), _user()
    record, secret = _enroll(method, context, user)
    with pytest.raises(VerificationError) as raised:
        method.verify(user=user, methods=[record], proof={"code": _wrong_code(secret, _step(context))}, context=context)
    assert "already used" not in str(raised.value)


def test_verify_accepts_codes_typed_with_a_space():
    method, context, user = TotpMethod(), _context(), _user()
    record, secret = _enroll(method, context, user)
    code = _code(secret, _step(context) + 1)
    result = method.verify(user=user, methods=[record], proof={"code": f"{code[:3]} {code[3:]}"}, context=context)
    assert result.counter == _step(context) + 1


@pytest.mark.parametrize("code", [None, 123456, "", "12345", "123456789", "abcdef", "12345a", "١٢٣٤٥٦", "１２３４５６"])
def test_verify_refuses_malformed_codes(code):
    method, context, user = TotpMethod(), _context(), _user()
    record, _ = _enroll(method, context, user)
    with pytest.raises(VerificationError):
        method.verify(user=user, methods=[record], proof={"code": code}, context=context)


def test_verify_refuses_codes_two_steps_away():
    method, context, user = TotpMethod(), _context(), _user()
    record, secret = _enroll(method, context, user)
    step = _step(context)
    window = {_code(secret, step + offset) for offset in (-1, 0, 1)}
    code = _code(secret, step + 2)
    if code not in window:  # two steps sharing a code (odds 1 in 10^6): nothing to refuse
        with pytest.raises(VerificationError):
            method.verify(user=user, methods=[record], proof={"code": code}, context=context)


def test_verify_returns_the_record_whose_code_matched():
    method, context, user = TotpMethod(), _context(), _user()
    first, _ = _enroll(method, context, user)
    second, second_secret = _enroll(method, context, user)
    code = _code(second_secret, _step(context) + 1)
    result = method.verify(user=user, methods=[first, second], proof={"code": code}, context=context)
    assert result.method_id == second.id and result.method_id != first.id


def test_method_works_at_a_fixed_moment_in_the_past():
    # The method reads the time from its context only: a fixed context gives the RFC's answer.
    moment = datetime.fromtimestamp(1111111111, UTC)
    method, context, user = TotpMethod(), _context(now=moment), _user()
    started = method.begin_enrollment(user=user, name="Phone", context=context)
    code = oathtool(started.client_data["secret"], unix_time=1111111111)
    result = method.complete_enrollment(user=user, record=started.record, proof={"code": code}, context=context)
    assert result.counter == 1111111111 // PERIOD


# -- Recovery codes --------------------------------------------------------------------------------

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
CODE_PATTERN = re.compile(rf"[{CROCKFORD}]{{4}}(-[{CROCKFORD}]{{4}}){{3}}")


def test_generate_codes_gives_ten_distinct_well_formed_codes():
    codes = recovery_codes.generate_codes()
    assert len(codes) == 10 and len(set(codes)) == 10
    for code in codes:
        assert CODE_PATTERN.fullmatch(code), code


def test_codes_carry_at_least_50_bits():
    assert recovery_codes.ALPHABET == CROCKFORD
    assert len(set(recovery_codes.ALPHABET)) == 32
    assert recovery_codes.BITS_PER_CODE >= 50
    # What a generated code actually carries: its symbols times log2(32) bits.
    symbols = len(recovery_codes.generate_codes(1)[0].replace("-", ""))
    assert symbols * math.log2(len(CROCKFORD)) == recovery_codes.BITS_PER_CODE
    assert not set("ilou") & set(recovery_codes.ALPHABET)


def test_generated_codes_use_the_whole_alphabet():
    # 3,200 symbols: a fair generator leaves one of the 32 out with odds about 32·(31/32)^3200 ≈ 10^-42.
    symbols = "".join(recovery_codes.generate_codes(200)).replace("-", "")
    assert set(symbols) == set(CROCKFORD)


def test_normalize_accepts_the_ways_people_type_a_code():
    canonical = "10abcdefghjkmnpq"
    for typed in [
        "10ab-cdef-ghjk-mnpq",
        "10AB-CDEF-GHJK-MNPQ",
        "10abcdefghjkmnpq",
        "10ab cdef ghjk mnpq",
        "  10ab-cdef - ghjk\tmnpq \n",
        "lOab-cdef-ghjk-mnpq",  # l for 1, O for 0
        "iOAB-CDEF-GHJK-MNPQ",  # i for 1
        "Loab-cdef-ghjk-mnpq",
    ]:
        assert recovery_codes.normalize(typed) == canonical, typed


def test_normalize_round_trips_generated_codes():
    for code in recovery_codes.generate_codes():
        assert recovery_codes.normalize(code) == code.replace("-", "")
        assert recovery_codes.normalize(code.upper().replace("-", " ")) == code.replace("-", "")


def test_normalize_refuses_what_cannot_be_a_code():
    code = "10ab-cdef-ghjk-mnpq"
    refused = [
        "",
        "10ab-cdef-ghjk-mnp",  # 15 symbols
        "10ab-cdef-ghjk-mnpqr",  # 17 symbols
        "10ab-cdef-ghjk-mnp!",
        "10ab-cdef-ghjk-mnp_",
        "10ab-cdef-ghjk-mnpé",
        "１0ab-cdef-ghjk-mnpq",  # a full-width digit
        "10ab.cdef.ghjk.mnpq",
        code + " " * (65 - len(code)),  # 65 characters, even if only spaces pad it
        "1" * 65,
    ]
    for typed in refused:
        assert recovery_codes.normalize(typed) is None, typed
    for not_a_string in (None, 1234567890123456, b"10abcdefghjkmnpq", ["10abcdefghjkmnpq"]):
        assert recovery_codes.normalize(not_a_string) is None  # type: ignore[arg-type]
    # 64 characters is still fine.
    assert recovery_codes.normalize(code + " " * (64 - len(code))) == "10abcdefghjkmnpq"


def test_hash_code_is_stable_across_spellings_and_differs_between_codes():
    first, second = recovery_codes.generate_codes(2)
    digest = recovery_codes.hash_code(first)
    for spelling in (first.upper(), first.replace("-", ""), first.replace("-", " "), f" {first} "):
        assert recovery_codes.hash_code(spelling) == digest
    assert recovery_codes.hash_code("10ab-cdef-ghjk-mnpq") == recovery_codes.hash_code("LOAB CDEF GHJK MNPQ")
    assert recovery_codes.hash_code(second) != digest
    with pytest.raises(ValueError):
        recovery_codes.hash_code("not a code")


def test_hash_code_never_contains_the_code():
    for code in recovery_codes.generate_codes():
        digest = recovery_codes.hash_code(code)
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        # (Its 4-symbol groups could turn up in 64 hex digits by chance, so only whole spellings are checked.)
        for form in (code, code.replace("-", ""), code.upper(), code.replace("-", "").upper()):
            assert form not in digest
