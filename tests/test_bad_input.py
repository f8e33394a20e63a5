"""Bad input on every endpoint (SECURITY.md "Bad input and faults", issue 2 "malformed input on every
endpoint (4xx problem+json, never 500)", API.md "Conventions").

The /api/v1 operations are taken from the app's own OpenAPI document, so a new endpoint is fuzzed
without touching this file. Each one gets, with an administrator's MFA session and without one:
malformed JSON, non-object JSON, wrong types for every property, missing required fields, unknown
fields, 100k-character strings, a body over ``max_body_bytes`` (413), odd Unicode (NUL, lone
surrogates, bidi overrides, emoji, combining marks, NFKC-changing characters) in every string, path
and query parameter, and the wrong content types; then hypothesis draws a few hundred bodies from the
schemas. Every answer must be below 500, and every 4xx an RFC 9457 problem. The server-rendered form
posts get the same treatment and must never answer 500 either.

Throttling is not under test here: the fuzz runs with limits high enough that it is not all 429s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twofold.container import Twofold
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.flows import (
    ADMIN_PASSWORD,
    USER_PASSWORD,
    Account,
    bearer,
    create_organization,
    create_user,
    enroll,
    login,
    sign_in,
)
from .support.methods import METHOD_TYPE

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}
MAX_BODY_BYTES = 256 * 1024  # Settings.max_body_bytes, the default under test

# Strings that have broken parsers, databases and normalisers before.
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",  # a lone high surrogate (only expressible escaped in JSON)
    "x\udfffy",  # a lone low surrogate
    "\u202eevil\u202c",  # right-to-left override
    "\u200b\u200d\ufeff",  # zero-width characters and a BOM
    "😀👩‍👩‍👧‍👦",  # emoji, a ZWJ sequence
    "e\u0301\u0301\u0301\u0301\u0301",  # stacked combining marks
    "ﬁ①Ｋ㎏ᵃ",  # NFKC changes every one of these
    "\u0130\u0131ß\u1e9e",  # case folding oddities
    "\r\n\t\x1b[31m",
    "%00%s%n{0}${x}",
    "'; DROP TABLE users; --",
    "\\",
    "\U0010ffff\ufffe\uffff",
    "a" * 300,
]
HUGE = "h" * 100_000
WRONG_TYPES: list[Any] = [None, 0, -1, 1.5, 10**40, True, [], ["a"], {}, {"a": 1}]
ODD_QUERY_VALUES = ["-1", "0", "abc", "1e9", "99999999999999999999", "%00", "%ED%A0%80", "%FF%FE", "%E2%80%AE"]


@dataclass
class Operation:
    method: str
    path: str
    parameters: list[dict[str, Any]]
    body_schema: dict[str, Any] | None

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(repr=False)
class Target:
    twofold: Twofold
    client: TestClient
    spec: dict[str, Any]
    admin: Account
    bob: Account
    path_values: dict[str, str]
    good: dict[str, Any]
    good_for_path: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return "Target(...)"

    def token_for(self, operation: Operation) -> str:
        """The administrator's MFA session; logging out gets a session of its own, to keep this one."""
        if operation.path == "/api/v1/logout":
            return sign_in(self.client, Account(self.admin.user, self.admin.password, code=self.admin.code))
        assert self.admin.token is not None
        return self.admin.token


# -- the OpenAPI document ------------------------------------------------------------------------


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def operations_of(spec: dict[str, Any]) -> list[Operation]:
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            schema = _resolve(spec, body["schema"]) if body else None
            found.append(Operation(method.upper(), path, operation.get("parameters", []), schema))
    return found


def properties(spec: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not schema:
        return {}
    return {name: _resolve(spec, value) for name, value in schema.get("properties", {}).items()}


def accepts_string(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "string":
        return True
    return any(accepts_string(option) for option in schema.get("anyOf", []))


# -- sending and checking ------------------------------------------------------------------------


def url_for(target: Target, operation: Operation, *, path_values: dict[str, str] | None = None, query: str = "") -> str:
    path = operation.path
    for name, value in {**target.path_values, **(path_values or {})}.items():
        path = path.replace("{" + name + "}", value)
    return path + (("?" + query) if query else "")


def encode(body: Any) -> bytes:
    # json.dumps escapes lone surrogates as \udXXX, which is how a client can send them at all.
    return json.dumps(body).encode()


def check(response: Any, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    if 400 <= response.status_code < 500:
        content_type = response.headers.get("content-type", "")
        assert content_type.startswith("application/problem+json"), f"{what}: {content_type} {response.text[:300]}"
        problem = response.json()
        assert set(problem) >= PROBLEM_KEYS, f"{what}: {problem}"
        assert problem["status"] == response.status_code, f"{what}: {problem}"
        assert isinstance(problem["code"], str) and problem["code"], f"{what}: {problem}"
        assert "Traceback" not in response.text


def send(
    target: Target,
    operation: Operation,
    *,
    content: bytes | None = None,
    content_type: str | None = "application/json",
    authenticated: bool,
    url: str | None = None,
    what: str,
    extra_headers: dict[str, str | bytes] | None = None,
) -> Any:
    headers: dict[str, str | bytes] = {}
    if content is not None and content_type:
        headers["Content-Type"] = content_type
    if authenticated:
        headers.update(bearer(target.token_for(operation)))
    headers.update(extra_headers or {})
    response = target.client.request(
        operation.method, url or url_for(target, operation), content=content, headers=headers
    )
    target.seen[response.status_code] = target.seen.get(response.status_code, 0) + 1
    check(response, f"{operation.name} [{what}, {'admin' if authenticated else 'anonymous'}]")
    return response


def baseline(target: Target, operation: Operation) -> dict[str, Any]:
    """A well-formed body for the operation: its required fields with plausible values."""
    good = {**target.good, **target.good_for_path.get(operation.path, {})}
    schema = operation.body_schema or {}
    return {name: good.get(name, "x") for name in schema.get("required", [])}


# -- the application under test ------------------------------------------------------------------


@pytest.fixture
def target(make_twofold: Any) -> Iterator[Target]:
    twofold = make_twofold(
        password_free_attempts=10**6,
        ip_failure_budget=10**6,
        mfa_free_attempts=10**6,
        mfa_lock_threshold=10**6,
        transaction_max_failures=10**6,
        # Cheaper argon2 keeps a few thousand password checks fast; the fuzz is about parsing.
        argon2_memory_kib=1024,
        argon2_time_cost=1,
    )
    app = create_app(twofold, housekeeping=False)
    with TestClient(app, base_url=PUBLIC_URL, raise_server_exceptions=False) as client:
        organization, admin = create_organization(twofold)
        enroll(client, admin)
        bob = enroll(client, create_user(twofold, organization, "bob"))
        carol = create_user(twofold, organization, "carol")
        mfa_transaction = login(client, bob).json()["transaction"]
        started = login(client, carol).json()
        assert started["status"] == "enrollment_required"
        enroll_transaction = started["transaction"]
        pending = client.post(
            "/api/v1/login/enroll", json={"transaction": enroll_transaction, "type": METHOD_TYPE, "name": "Key"}
        ).json()
        created = client.post(
            f"/api/v1/organizations/{organization.id}/users",
            json={"username": "dave", "email": "dave@example.com", "kind": "user"},
            headers=bearer(admin.token),
        )
        assert created.status_code == 201, created.text
        setup_token = created.json()["setup_url"].rsplit("/", 1)[-1]
        spec = client.get("/api/v1/openapi.json").json()
        good = {
            "username": "bob",
            "password": USER_PASSWORD,
            "transaction": mfa_transaction,
            "type": METHOD_TYPE,
            "code": "0000000000000000",
            "name": "Key",
            "enrollment_id": pending["enrollment_id"],
            "token": setup_token,
            # Never the administrator's real password: a fuzzed password change must not succeed.
            "current_password": "not the current password",
            "new_password": "another quite long passphrase 7",
            "email": "new@example.com",
            "display_name": "Dee",
            "kind": "user",
            "status": "active",
        }
        assert ADMIN_PASSWORD not in good.values()
        yield Target(
            twofold=twofold,
            client=client,
            spec=spec,
            admin=admin,
            bob=bob,
            path_values={"org": organization.id, "user_id": bob.user.id},
            good=good,
            good_for_path={
                "/api/v1/login/enroll": {"transaction": enroll_transaction},
                "/api/v1/login/enroll/complete": {"transaction": enroll_transaction},
            },
        )


def test_openapi_lists_every_api_endpoint(target: Target) -> None:
    names = {operation.name for operation in operations_of(target.spec)}
    for expected in (
        "POST /api/v1/login",
        "POST /api/v1/login/verify",
        "POST /api/v1/login/enroll",
        "POST /api/v1/login/enroll/complete",
        "POST /api/v1/logout",
        "POST /api/v1/setup",
        "POST /api/v1/password-reset",
        "POST /api/v1/password-reset/complete",
        "GET /api/v1/me",
        "POST /api/v1/me/password",
        "GET /api/v1/organizations/{org}/users",
        "POST /api/v1/organizations/{org}/users",
        "GET /api/v1/organizations/{org}/audit-events",
    ):
        assert expected in names
    assert all(operation.path.startswith("/api/v1/") for operation in operations_of(target.spec))


# -- the deterministic battery -------------------------------------------------------------------


def test_every_endpoint_survives_malformed_bodies(target: Target) -> None:
    for operation in operations_of(target.spec):
        for authenticated in (True, False):
            for what, content in [
                ("truncated JSON", b'{"username": "bob", "password":'),
                ("not JSON at all", b"\xff\xfe\x00garbage"),
                ("a JSON array", b"[]"),
                ("an array of objects", b'[{"username": "bob"}]'),
                ("null", b"null"),
                ("a number", b"42"),
                ("a string", b'"hello"'),
                ("NaN", b'{"a": NaN}'),
                ("deeply nested", b"[" * 5000 + b"]" * 5000),
                ("duplicate keys", b'{"username": "a", "username": "b"}'),
                ("empty body", b""),
            ]:
                send(target, operation, content=content, authenticated=authenticated, what=what)
            send(target, operation, content=None, content_type=None, authenticated=authenticated, what="no body")


def test_every_endpoint_survives_wrong_content_types(target: Target) -> None:
    for operation in operations_of(target.spec):
        body = encode(baseline(target, operation))
        for authenticated in (True, False):
            for content_type, content in [
                ("text/plain", body),
                ("application/x-www-form-urlencoded", b"username=bob&password=x&transaction=y"),
                (
                    "multipart/form-data; boundary=xyz",
                    b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--xyz--\r\n',
                ),
                ("multipart/form-data", b"garbage"),
                ("application/json; charset=latin-1", body),
                ("application/xml", b"<login><username>bob</username></login>"),
                ("application/json", body.decode().encode("utf-16")),
            ]:
                send(
                    target,
                    operation,
                    content=content,
                    content_type=content_type,
                    authenticated=authenticated,
                    what=f"content type {content_type}",
                )


def test_every_property_gets_wrong_types_missing_and_unknown_fields(target: Target) -> None:
    for operation in operations_of(target.spec):
        schema = operation.body_schema
        if schema is None:
            continue
        base = baseline(target, operation)
        for authenticated in (True, False):
            for name in properties(target.spec, schema):
                for wrong in WRONG_TYPES:
                    body = {**base, name: wrong}
                    send(target, operation, content=encode(body), authenticated=authenticated, what=f"{name}={wrong!r}")
            for name in schema.get("required", []):
                body = {key: value for key, value in base.items() if key != name}
                send(target, operation, content=encode(body), authenticated=authenticated, what=f"without {name}")
            send(target, operation, content=encode({}), authenticated=authenticated, what="empty object")
            for extra in ({"is_admin": True}, {"__proto__": {"x": 1}}, {"": None}, {"\ud800": "\x00"}):
                send(
                    target,
                    operation,
                    content=encode({**base, **extra}),
                    authenticated=authenticated,
                    what=f"unknown field {list(extra)!r}",
                )


def accepts_object(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "object":
        return True
    return any(accepts_object(option) for option in schema.get("anyOf", []))


def test_every_string_property_gets_odd_unicode_and_huge_values(target: Target) -> None:
    for operation in operations_of(target.spec):
        base = baseline(target, operation)
        schema = operation.body_schema or {}
        fields = properties(target.spec, schema)
        # A body that allows more fields (a method's proof) gets the usual proof fields too.
        free = ["code", "credential", "challenge_id"] if schema.get("additionalProperties") is True else []
        for authenticated in (True, False):
            for name in [*fields, *free]:
                if name in fields and not accepts_string(fields[name]):
                    if accepts_object(fields[name]):  # free-form JSON: odd text in keys and values
                        for value in ODD_STRINGS:
                            send(
                                target,
                                operation,
                                content=encode({**base, name: {"k": value, value: [value, {"n": value}]}}),
                                authenticated=authenticated,
                                what=f"{name} holding {value[:20]!r}",
                            )
                    continue
                for value in [*ODD_STRINGS, HUGE]:
                    send(
                        target,
                        operation,
                        content=encode({**base, name: value}),
                        authenticated=authenticated,
                        what=f"{name}={value[:20]!r}",
                    )


def test_every_endpoint_refuses_a_body_over_the_limit(target: Target) -> None:
    assert target.twofold.settings.max_body_bytes == MAX_BODY_BYTES
    oversized = encode({"username": "x" * (MAX_BODY_BYTES + 1), "password": "y"})
    for operation in operations_of(target.spec):
        for authenticated in (True, False):
            response = send(target, operation, content=oversized, authenticated=authenticated, what="over the limit")
            assert response.status_code == 413, f"{operation.name}: {response.status_code}"
            assert response.json()["code"] == "payload_too_large"


def test_a_streamed_body_over_the_limit_is_refused_too(target: Target) -> None:
    """Without Content-Length (chunked), the limit is enforced while reading."""

    def chunks() -> Iterator[bytes]:
        yield b'{"username": "'
        for _ in range(40):
            yield b"x" * 8192
        yield b'", "password": "y"}'

    for path in ("/api/v1/login", "/api/v1/setup"):
        response = target.client.post(path, content=chunks(), headers={"Content-Type": "application/json"})
        check(response, f"chunked {path}")
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "payload_too_large"


def test_path_and_query_parameters_get_odd_values(target: Target) -> None:
    odd_path_values = [quote(value.encode("utf-8", "surrogatepass"), safe="") for value in ODD_STRINGS if value] + [
        "%ED%A0%80",
        "%FF",
        "..",
        "%2E%2E%2F%2E%2E",
        "%2F",
        "a" * 5000,
        "%00",
    ]
    for operation in operations_of(target.spec):
        names = [p["name"] for p in operation.parameters if p["in"] == "path"]
        content = encode(baseline(target, operation)) if operation.body_schema else None
        for authenticated in (True, False):
            for name in names:
                for value in odd_path_values:
                    send(
                        target,
                        operation,
                        content=content,
                        authenticated=authenticated,
                        url=url_for(target, operation, path_values={name: value}),
                        what=f"path {name}={value[:20]!r}",
                    )
            for parameter in (p["name"] for p in operation.parameters if p["in"] == "query"):
                values = ODD_QUERY_VALUES + [quote(v.encode("utf-8", "surrogatepass"), safe="") for v in ODD_STRINGS]
                values += ["x" * 5000, "garbage-cursor", "2024-13-45", "not-a-date", "2024-01-01T25:61:61Z"]
                for value in values:
                    send(
                        target,
                        operation,
                        content=content,
                        authenticated=authenticated,
                        url=url_for(target, operation, query=f"{parameter}={value}"),
                        what=f"query {parameter}={value[:20]!r}",
                    )
            # The same parameter twice, and an unknown one.
            send(
                target,
                operation,
                content=content,
                authenticated=authenticated,
                url=url_for(target, operation, query="limit=1&limit=x&cursor=&cursor=%00&unknown=1&since=&q="),
                what="repeated and unknown query parameters",
            )


def test_named_query_values_are_refused_with_422(target: Target) -> None:
    """The examples of the brief on the paged admin lists: a 422 validation_error each, never a 500."""
    org = target.path_values["org"]
    headers = bearer(target.admin.token)
    for path in (f"/api/v1/organizations/{org}/users", f"/api/v1/organizations/{org}/audit-events"):
        for query in ("limit=-1", "limit=abc", "limit=0", "limit=100000", "cursor=garbage", "cursor=%00%FF"):
            response = target.client.get(f"{path}?{query}", headers=headers)
            check(response, f"{path}?{query}")
            assert response.status_code == 422, (query, response.text)
            assert response.json()["code"] == "validation_error"
    response = target.client.get(f"/api/v1/organizations/{org}/audit-events?since=not-a-date", headers=headers)
    check(response, "since=not-a-date")
    assert response.status_code == 422
    for query in ("q=%00", "q=%E2%80%AE", "q=%F0%9F%98%80", "q=%EF%AC%81", "q=" + "x" * 300):
        response = target.client.get(f"/api/v1/organizations/{org}/users?{query}", headers=headers)
        check(response, query)
        assert response.status_code in (200, 422), (query, response.text)


def test_odd_authorization_headers(target: Target) -> None:
    for operation in operations_of(target.spec):
        content = encode(baseline(target, operation)) if operation.body_schema else None
        headers: list[str | bytes] = [
            "Bearer",
            "Bearer ",
            "Basic YWxpY2U6cGFzc3dvcmQ=",
            "Bearer tfs_",
            "Bearer tfs_" + "a" * 5000,
            f"Bearer {target.good['transaction']}",  # a login transaction is never a session
            "Bearer tfs_\u00ff\u00fe".encode("latin-1"),
            "bearer  tfs_x  y",
        ]
        for header in headers:
            response = send(
                target,
                operation,
                content=content,
                authenticated=False,
                extra_headers={"Authorization": header},
                what=f"Authorization: {header[:24]!r}",
            )
            assert response.status_code < 500


# -- hypothesis: bodies drawn from the schemas ---------------------------------------------------

ODD_CHARACTERS = st.sampled_from(
    [
        "\x00",
        "\ud800",
        "\udfff",
        "\u202e",
        "\u200b",
        "\ufeff",
        "\u0301",
        "ﬁ",
        "①",
        "Ｋ",
        "ß",
        "İ",
        "😀",
        "\n",
        "\\",
        '"',
    ]
)
TEXT = st.text(alphabet=st.one_of(st.characters(), ODD_CHARACTERS), max_size=40) | st.sampled_from(ODD_STRINGS)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)


def value_for(spec: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the schema's own type (with odd text), sometimes out of bounds."""
    schema = _resolve(spec, schema)
    if "anyOf" in schema:
        return st.one_of([value_for(spec, option) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | TEXT
    kind = schema.get("type")
    if kind == "string":
        limit = schema.get("maxLength", 256)
        return TEXT | st.text(min_size=limit, max_size=limit + 2) | st.just("")
    if kind == "integer":
        return st.integers(min_value=-(2**64), max_value=2**64)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(JSON_VALUES, max_size=3)
    if kind == "object":
        return st.dictionaries(TEXT, JSON_VALUES, max_size=4)
    return JSON_VALUES


@st.composite
def bodies(draw: st.DrawFn, target: Target, operation: Operation) -> Any:
    schema = operation.body_schema
    if schema is None or draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUES)  # anything at all, most often not an object
    base = baseline(target, operation)
    body: dict[str, Any] = {}
    for name, prop in properties(target.spec, schema).items():
        choice = draw(st.sampled_from(["good", "typed", "wrong", "absent"]))
        if choice == "good" and name in base:
            body[name] = base[name]
        elif choice == "typed":
            body[name] = draw(value_for(target.spec, prop))
        elif choice == "wrong":
            body[name] = draw(JSON_VALUES)
        elif choice == "good":
            body[name] = draw(value_for(target.spec, prop))
    body.update(draw(st.dictionaries(TEXT, JSON_VALUES, max_size=2)))
    return body


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_bodies_drawn_from_the_openapi_schemas(target: Target, data: st.DataObject) -> None:
    operation = data.draw(st.sampled_from(operations_of(target.spec)), label="operation")
    body = data.draw(bodies(target, operation), label="body")
    path_values = {
        p["name"]: quote(
            data.draw(TEXT | st.just(target.path_values.get(p["name"], "x"))).encode("utf-8", "surrogatepass"), safe=""
        )
        or "x"
        for p in operation.parameters
        if p["in"] == "path"
    }
    query = "&".join(
        f"{p['name']}={quote(data.draw(TEXT).encode('utf-8', 'surrogatepass'), safe='')}"
        for p in operation.parameters
        if p["in"] == "query" and data.draw(st.booleans())
    )
    authenticated = data.draw(st.booleans(), label="authenticated") and operation.path != "/api/v1/logout"
    send(
        target,
        operation,
        content=encode(body),
        authenticated=authenticated,
        url=url_for(target, operation, path_values=path_values, query=query),
        what=f"drawn body {json.dumps(body)[:300]}",
    )


# -- the server-rendered forms -------------------------------------------------------------------


def _csrf(client: TestClient) -> tuple[str, str]:
    page = client.get("/login")
    seed = page.cookies.get("__Host-twofold_csrf")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert seed and token, page.text[:500]
    return seed, token.group(1)


def test_form_posts_survive_odd_input(target: Target) -> None:
    client = target.client
    seed, csrf = _csrf(client)
    carol_transaction = target.good_for_path["/api/v1/login/enroll"]["transaction"]
    forms: list[tuple[str, list[str], str | None]] = [
        ("/login", ["username", "password"], None),
        ("/login/verify", ["type", "code", "credential_json", "challenge_id"], target.good["transaction"]),
        ("/login/enroll", ["type", "name"], carol_transaction),
        ("/login/enroll/complete", ["enrollment_id", "code"], carol_transaction),
        ("/password-reset", ["username"], None),
        (f"/setup/{target.good['token']}", ["password", "confirm_password"], None),
        ("/setup/%00%ED%A0%80", ["password", "confirm_password"], None),
        ("/password-reset/" + "t" * 3000, ["password", "confirm_password"], None),
        ("/logout", [], None),
    ]
    statuses: dict[int, int] = {}

    def post(path: str, content: bytes, content_type: str, cookies: dict[str, str], what: str) -> None:
        cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        response = client.post(
            path, content=content, headers={"Content-Type": content_type, "Cookie": cookie, "Origin": PUBLIC_URL}
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{path} [{what}]: {response.status_code} {response.text[:500]}"
        if response.headers.get("content-type", "").startswith("application/json"):
            raise AssertionError(f"{path} [{what}]: a form post answered bare JSON")

    for path, fields, transaction in forms:
        cookies = {"__Host-twofold_csrf": seed}
        if transaction:
            cookies["__Host-twofold_login"] = transaction
        form_type = "application/x-www-form-urlencoded"
        # The other fields hold good values, so that the odd one gets past the first checks.
        good = {"username": "bob", "type": METHOD_TYPE, "code": "0000", "name": "Key", "password": USER_PASSWORD}
        for name in fields or ["anything"]:
            for value in [*ODD_STRINGS, HUGE[:60_000], "x" * 70_000]:
                encoded = quote(value.encode("utf-8", "surrogatepass"), safe="")
                others = "".join(f"&{k}={quote(v)}" for k, v in good.items() if k in fields and k != name)
                content = f"csrf_token={csrf}&{name}={encoded}{others}".encode()
                post(path, content, form_type, cookies, f"{name}={value[:20]!r}")
        for what, content, content_type in [
            ("no CSRF token", b"username=bob&password=x", form_type),
            ("a wrong CSRF token", b"csrf_token=forged&username=bob", form_type),
            ("invalid percent escapes", f"csrf_token={csrf}&username=%ZZ%&password=%".encode(), form_type),
            ("a raw invalid UTF-8 byte", f"csrf_token={csrf}&username=".encode() + b"\xff\xfe", form_type),
            ("repeated fields", f"csrf_token={csrf}&username=a&username=b&type=x&type=y".encode(), form_type),
            ("many fields", "&".join(f"f{i}=v" for i in range(200)).encode(), form_type),
            (
                "JSON instead of a form",
                json.dumps({"csrf_token": csrf, "username": "bob"}).encode(),
                "application/json",
            ),
            ("plain text", b"username=bob", "text/plain"),
            (
                "a multipart file",
                b'--b\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
                + csrf.encode()
                + b'\r\n--b\r\nContent-Disposition: form-data; name="f"; filename="x.txt"\r\n\r\nxyz\r\n--b--\r\n',
                "multipart/form-data; boundary=b",
            ),
            ("broken multipart", b"--b\r\nnonsense", "multipart/form-data; boundary=b"),
            ("multipart without a boundary", b"whatever", "multipart/form-data"),
            ("over the body limit", b"username=" + b"x" * (MAX_BODY_BYTES + 10), form_type),
        ]:
            post(path, content, content_type, cookies, what)
        # Odd cookies: a forged login transaction, and a CSRF seed of odd characters.
        post(
            path, f"csrf_token={csrf}".encode(), form_type, {**cookies, "__Host-twofold_login": "tft_forged"}, "forged"
        )
        post(path, b"csrf_token=x", form_type, {"__Host-twofold_csrf": "%00" * 30}, "odd seed")
    assert statuses.get(403), statuses  # the CSRF checks answered
