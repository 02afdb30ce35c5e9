"""labkit.check.ch05 against a live docker-registry on loopback: the reference passes, each usual
mistake gets its own hint, and nothing but 127.0.0.1 is contacted."""
from __future__ import annotations

import hashlib
import http.client
import shutil
import socket
import time
import urllib.parse

import pytest

from labkit import doctor
from labkit.check import ch05
from labkit.registry import LocalRegistry

# Host only, as chapter 05 itself: registries and the distribution API have no cgroup or
# kernel-version side for the cgroup v2 VM to check.
pytestmark = [pytest.mark.skipif(not shutil.which("docker-registry") and not shutil.which("registry"),
                                 reason="needs docker-registry (apt-get install docker-registry)")]


@pytest.fixture(scope="module")
def registry():
    with LocalRegistry() as reg:
        yield reg
    assert not reg.running
    assert not any(f"registry pid {reg.pid}" in str(leak) for leak in doctor.leaks())


def get(registry_url, repo, digest):
    """(status, headers, body) of GET /v2/<repo>/blobs/<digest>, by hand."""
    url = urllib.parse.urlsplit(registry_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("GET", f"/v2/{repo}/blobs/{digest}")
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def reference(registry_url, repo, digest):
    status, _, body = get(registry_url, repo, digest)
    if status != 200:
        raise ValueError(f"GET blob {digest}: HTTP {status}")
    algorithm, _, expected = digest.partition(":")
    if algorithm != "sha256" or hashlib.sha256(body).hexdigest() != expected:
        raise ValueError(f"blob {digest}: the bytes received do not match the digest")
    return body


def returns_none_on_mismatch(registry_url, repo, digest):
    status, _, body = get(registry_url, repo, digest)
    return body if status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest else None


def no_check(registry_url, repo, digest):
    return get(registry_url, repo, digest)[2]


def trusts_the_header(registry_url, repo, digest):
    status, headers, body = get(registry_url, repo, digest)
    if status != 200 or headers["Docker-Content-Digest"] != digest:
        raise ValueError("digest mismatch")
    return body


def checks_only_on_200(registry_url, repo, digest):
    status, _, body = get(registry_url, repo, digest)
    if status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() != digest:
        raise ValueError("digest mismatch")
    return body


def decodes(registry_url, repo, digest):
    return reference(registry_url, repo, digest).decode("latin-1")


def truncates(registry_url, repo, digest):
    url = urllib.parse.urlsplit(registry_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", f"/v2/{repo}/blobs/{digest}")
    body = conn.getresponse().read(1024)
    conn.close()
    return body


def raises(registry_url, repo, digest):
    raise RuntimeError("not yet")


def test_reference_solution_passes(registry):
    verdict = ch05.fetch_blob_verified(reference, registry)
    assert verdict, repr(verdict)
    assert "one byte flipped" in verdict.message


def test_returning_none_counts_as_refusing(registry):
    assert ch05.fetch_blob_verified(returns_none_on_mismatch, registry)


@pytest.mark.parametrize("where", ["host", "url"])
def test_the_registry_may_be_given_as_text(registry, where):
    assert ch05.fetch_blob_verified(reference, registry.host if where == "host" else registry.url)


@pytest.mark.parametrize("fetch, message, hint", [
    (no_check, "one byte changed in transit", "hashlib.sha256(body)"),
    (trusts_the_header, "one byte changed in transit", "Docker-Content-Digest header is only its claim"),
    (checks_only_on_200, "HTTP 404 BLOB_UNKNOWN", "response.status == 200"),
    (decodes, "returned str, not the blob's bytes", "response.read() gives bytes"),
    (truncates, "returned 1024 bytes, not the", "read it all"),
    (raises, "raised RuntimeError: not yet", "urllib.parse.urlsplit"),
])
def test_each_wrong_answer_gets_its_hint(registry, fetch, message, hint):
    verdict = ch05.fetch_blob_verified(fetch, registry)
    assert not verdict
    assert message in verdict.message and hint in verdict.hint, repr(verdict)


def test_a_function_that_ignores_the_url_it_is_given_fails(registry):
    def fixed_server(registry_url, repo, digest):
        return reference(registry.url, repo, digest)  # always the real registry: the proxies see nothing

    verdict = ch05.fetch_blob_verified(fixed_server, registry)
    assert not verdict and "reached the registry_url" in verdict.message and ".hostname" in verdict.hint


def test_a_hanging_function_is_reported(registry):
    def hangs(registry_url, repo, digest):
        time.sleep(3)

    started = time.monotonic()
    verdict = ch05.fetch_blob_verified(hangs, registry, timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert not verdict and "did not return within" in verdict.message and "timeout" in verdict.hint


def test_not_a_function(registry):
    verdict = ch05.fetch_blob_verified(b"bytes", registry)
    assert not verdict and "expected a function" in verdict.message


def test_a_registry_off_loopback_is_refused_without_contact(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the check tried to connect")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(http.client.HTTPConnection, "connect", no_network)
    for where in ("http://192.0.2.1:5000", "registry.example.com:5000", "docker.io"):
        verdict = ch05.fetch_blob_verified(reference, where)
        assert not verdict and "only to a registry on 127.0.0.1" in verdict.message, repr(verdict)


def test_a_stopped_registry_gives_a_verdict_not_a_traceback():
    reg = LocalRegistry().start()
    reg.stop()
    port = reg.port
    verdict = ch05.fetch_blob_verified(reference, f"127.0.0.1:{port}")
    assert not verdict and "could not push" in verdict.message
