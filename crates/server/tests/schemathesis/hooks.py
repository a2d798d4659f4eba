"""Schemathesis hooks for `cargo xtask test` (see xtask/src/schemathesis.rs).

Every generated request is signed in — as a fresh account of its own where the request may end the session
(sign-out, password change), as one shared account elsewhere — except sign-up and sign-in, which replace the
session they are sent with. SYNCLINE_URL names the server under test.
"""

import os
import uuid

import requests
import schemathesis

BASE = os.environ["SYNCLINE_URL"]
COOKIE = "syncline_session"
PASSWORD = "schemathesis-password"


def new_session() -> str:
    name = "st-" + uuid.uuid4().hex[:20]
    r = requests.post(f"{BASE}/api/auth/signup", json={"username": name, "password": PASSWORD}, timeout=30)
    r.raise_for_status()
    return r.cookies[COOKIE]


def set_cookie(case, token):
    case.headers = case.headers or {}
    case.headers["Cookie"] = f"{COOKIE}={token}"


ENDS_SESSION = r"^/api/auth/(signout|password)$"


@schemathesis.auth(refresh_interval=None).apply_to(path_regex=ENDS_SESSION)
class OwnSession:
    def get(self, case, ctx):
        return new_session()

    def set(self, case, data, ctx):
        set_cookie(case, data)


@schemathesis.auth(refresh_interval=3600).skip_for(path_regex=ENDS_SESSION).skip_for(
    path_regex=r"^/api/auth/(signup|signin)$"
)
class SharedSession:
    def get(self, case, ctx):
        return new_session()

    def set(self, case, data, ctx):
        set_cookie(case, data)


@schemathesis.hook
def map_headers(ctx, headers):
    # A fresh idempotency key per request: one generated key reused across operations is a different write
    # under a used key, refused by design (422 `idempotency_key_reused`; replays are tested in tests/http_api.rs).
    if headers and "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = str(uuid.uuid4())
    return headers


# Refusals that mean "the request does not fit the API" — never the answer to a request the schema allows.
MALFORMED = {"invalid_parameter", "malformed_json", "invalid_body", "invalid_field", "unsupported_media_type"}


@schemathesis.check
def schema_compliant_requests_are_not_refused_as_malformed(ctx, response, case):
    """The server may refuse a valid request for what it means (409 stale version, 422 no such user or a quota),
    which a schema cannot say; it may not call it malformed. With positive_data_acceptance allowing 409 and
    422, this keeps schema/server disagreements failing."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    if response.status_code in (400, 415, 422):
        try:
            code = response.json().get("error")
        except Exception:
            code = None
        if code in MALFORMED or code is None:
            raise AssertionError(
                f"a request the schema allows was refused as malformed: {response.status_code} {response.text[:300]}"
            )
    return None
