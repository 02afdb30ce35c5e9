"""WWW-Authenticate parsing, docker config credentials, the token cache, the insecure policy."""
from __future__ import annotations

import base64
import json
import time

import pytest

from labkit.registry import InsecureRegistryError, RegistryClient, parse_www_authenticate
from labkit.registry.auth import (Credentials, Token, TokenCache, credentials_from_docker_config, merge_scopes,
                                  token_from_response)
from labkit.registry.transport import check_url_allowed, default_endpoint, is_loopback


def test_docker_hub_bearer_challenge():
    [c] = parse_www_authenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                 'scope="repository:library/busybox:pull"')
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.service == "registry.docker.io"
    assert c.scopes == ("repository:library/busybox:pull",)


def test_several_challenges_quotes_and_commas():
    challenges = parse_www_authenticate(
        'Basic realm="a \\"quoted\\" realm", Bearer realm="http://127.0.0.1:1/token", '
        'service=reg, scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"')
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].realm == 'a "quoted" realm'
    bearer = challenges[1]
    assert bearer.service == "reg"
    assert bearer.scopes == ("repository:a/b:pull,push", "repository:c:pull")
    assert bearer.params["error"] == "insufficient_scope"


@pytest.mark.parametrize("header", ["", "   ", ","])
def test_empty_challenges(header):
    assert parse_www_authenticate(header) == []


def test_basic_without_params_and_case():
    [c] = parse_www_authenticate("BASIC Realm=registry")
    assert c.scheme == "basic" and c.realm == "registry"


def _config(tmp_path, auths):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths, "credsStore": "desktop"}))
    return str(path)


def test_docker_config_credentials(tmp_path):
    b64 = base64.b64encode(b"alice:s3cr:et").decode()
    path = _config(tmp_path, {
        "https://index.docker.io/v1/": {"auth": b64},
        "http://127.0.0.1:5000": {"username": "bob", "password": "pw"},
        "quay.io": {"auth": base64.b64encode(b"carol:x").decode()},
    })
    assert credentials_from_docker_config("docker.io", path) == Credentials("alice", "s3cr:et")
    assert credentials_from_docker_config("127.0.0.1:5000", path) == Credentials("bob", "pw")
    assert credentials_from_docker_config("quay.io", path).username == "carol"
    assert credentials_from_docker_config("ghcr.io", path) is None
    assert credentials_from_docker_config("docker.io", str(tmp_path / "missing.json")) is None


def test_docker_config_env_and_client(tmp_path, monkeypatch):
    _config(tmp_path, {"127.0.0.1:5000": {"username": "bob", "password": "pw"}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    client = RegistryClient("127.0.0.1:5000")
    assert client.transport.credentials == Credentials("bob", "pw")
    assert RegistryClient("127.0.0.1:5000", credentials=("x", "y")).transport.credentials == Credentials("x", "y")
    assert "pw" not in repr(client.transport.credentials)


def test_token_cache_covers_narrower_scopes():
    cache = TokenCache()
    cache.put(cache.key("r", "s", ["repository:a:pull,push"]), Token("T", time.monotonic() + 300))
    assert cache.find("r", "s", ["repository:a:pull"]).value == "T"
    assert cache.find("r", "s", ["repository:a:pull", "repository:a:push"]).value == "T"
    assert cache.find("r", "s", ["repository:b:pull"]) is None
    assert cache.find("r", "other", ["repository:a:pull"]) is None
    cache.put(cache.key("r", "s", ["repository:b:pull"]), Token("old", time.monotonic() + 1))
    assert cache.find("r", "s", ["repository:b:pull"]) is None  # about to expire: not used


def test_merge_scopes_and_token_answers():
    assert merge_scopes(["repository:x:push", "repository:x:pull", "repository:y:pull"]) == \
        ("repository:x:pull,push", "repository:y:pull")
    assert token_from_response(b'{"access_token": "A", "expires_in": 120}').value == "A"
    token = token_from_response(b'{"token": "T"}')  # no expires_in: the spec's 60 s
    assert token.value == "T" and 50 < token.expires_at - time.monotonic() <= 60
    with pytest.raises(ValueError):
        token_from_response(b"{}")


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True),
                                        ("localhost", True), ("10.0.0.1", False), ("example.com", False),
                                        ("127.0.0.1.nip.io", False), (None, False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_plain_http_only_to_loopback_or_listed(monkeypatch):
    monkeypatch.delenv("LABKIT_INSECURE_REGISTRIES", raising=False)
    check_url_allowed("http://127.0.0.1:5000/v2/")
    check_url_allowed("https://registry-1.docker.io/v2/")
    with pytest.raises(InsecureRegistryError) as info:
        check_url_allowed("http://10.0.0.5:5000/v2/")
    assert "insecure" in info.value.hint
    check_url_allowed("http://10.0.0.5:5000/v2/", insecure=["10.0.0.5:5000"])
    check_url_allowed("http://myreg/v2/", insecure=["myreg"])
    monkeypatch.setenv("LABKIT_INSECURE_REGISTRIES", "10.0.0.5:5000, other")
    check_url_allowed("http://10.0.0.5:5000/v2/")
    with pytest.raises(InsecureRegistryError):
        check_url_allowed("ftp://127.0.0.1/")


def test_default_endpoints_and_client_refusal(monkeypatch):
    monkeypatch.delenv("LABKIT_INSECURE_REGISTRIES", raising=False)
    assert default_endpoint("registry-1.docker.io") == "https://registry-1.docker.io"
    assert default_endpoint("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert default_endpoint("localhost:5000") == "http://localhost:5000"
    assert default_endpoint("reg.lan:5000", ["reg.lan:5000"]) == "http://reg.lan:5000"
    assert RegistryClient("docker.io").endpoint == "https://registry-1.docker.io"  # nothing is contacted
    assert RegistryClient("quay.io").endpoint == "https://quay.io"
    with pytest.raises(InsecureRegistryError):
        RegistryClient("10.1.2.3:5000", endpoint="http://10.1.2.3:5000")


def test_client_registry_names():
    assert RegistryClient("index.docker.io").registry == "docker.io"
    assert RegistryClient("myhost").endpoint == "https://myhost"  # a bare host is a host, not a Hub repo
    assert RegistryClient("localhost:5000").endpoint == "http://localhost:5000"
