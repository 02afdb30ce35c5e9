"""Registry error bodies and statuses become LabkitErrors that say what to do."""
from __future__ import annotations

import email.utils
import json
import time

import pytest

from labkit.errors import LabkitError
from labkit.images.store import DigestError
from labkit.registry import (BlobUnknownError, DeniedError, DigestInvalidError, DigestMismatchError,
                             ManifestUnknownError, NameUnknownError, RegistryError, TooManyRequestsError,
                             UnauthorizedError)
from labkit.registry.errors import from_response, parse_retry_after


def body(code, message="msg", detail=None):
    return json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]}).encode()


@pytest.mark.parametrize("status, code, cls, hint_word", [
    (404, "MANIFEST_UNKNOWN", ManifestUnknownError, "tag"),
    (404, "BLOB_UNKNOWN", BlobUnknownError, "push the blob"),
    (400, "DIGEST_INVALID", DigestInvalidError, "digest"),
    (404, "NAME_UNKNOWN", NameUnknownError, "library/"),
    (401, "UNAUTHORIZED", UnauthorizedError, "credentials"),
    (403, "DENIED", DeniedError, "permission"),
    (429, "TOOMANYREQUESTS", TooManyRequestsError, "wait"),
])
def test_codes_map_to_classes_with_hints(status, code, cls, hint_word):
    err = from_response(status, {}, body(code, "it failed", {"x": 1}), "manifest demo:1")
    assert type(err) is cls
    assert isinstance(err, RegistryError) and isinstance(err, LabkitError)
    assert err.status == status and err.code == code and err.detail == {"x": 1}
    assert code in str(err) and "it failed" in str(err) and "manifest demo:1" in str(err)
    assert hint_word in err.hint


@pytest.mark.parametrize("status, cls", [(401, UnauthorizedError), (403, DeniedError), (429, TooManyRequestsError)])
def test_status_alone(status, cls):
    err = from_response(status, {}, b"", "GET /v2/")
    assert type(err) is cls and err.hint


def test_404_and_500_without_body():
    err = from_response(404, {}, b"", "HEAD /v2/x/blobs/y")
    assert type(err) is RegistryError and err.status == 404 and "check the reference" in err.hint
    err = from_response(503, {}, b"<html>down</html>", "GET /v2/")
    assert "down" in str(err) and "log" in err.hint


def test_retry_after_seconds_and_date():
    err = from_response(429, {"Retry-After": "30"}, body("TOOMANYREQUESTS"), "pull")
    assert err.retry_after == 30 and "30 s" in err.hint
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < parse_retry_after(when) <= 121
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_unknown_code_keeps_code():
    err = from_response(400, {}, body("BLOB_UPLOAD_INVALID"), "upload")
    assert type(err) is RegistryError and err.code == "BLOB_UPLOAD_INVALID" and "start the upload" in err.hint


def test_digest_mismatch_is_a_digest_error():
    err = DigestMismatchError("bad", "fetch again")
    assert isinstance(err, DigestError) and isinstance(err, RegistryError)
