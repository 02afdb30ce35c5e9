"""The client against a fake registry on loopback: pull, verification, resume, skip, auth, errors.

No root needed: the fake is an in-process HTTP server on 127.0.0.1 (tests/registry_helpers.py).
"""
from __future__ import annotations

import io
import json
import os

import pytest

from labkit.images.store import Store
from labkit.registry import (ACCEPT, DOCKER_LIST, DOCKER_MANIFEST, Collect, DigestMismatchError,
                             InsecureRegistryError, ManifestUnknownError, NameUnknownError, RegistryClient,
                             RegistryUnreachableError, TextProgress, TooManyRequestsError, UnauthorizedError, pull,
                             progress_bar)
from labkit.registry.client import INCOMING
from registry_helpers import FakeRegistry

BIG = os.urandom(200_000)  # incompressible, so the gzip layer is ~200 kB
LAYERS = [{"etc/os-release": b"ID=labkit\n"}, {"bin/tool": BIG}, {"srv/data": b"x" * 5000}]


@pytest.fixture
def fake():
    with FakeRegistry() as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "labkit-store"))


def leftovers(store):
    """Files that are not finished blobs: partials and temp files."""
    incoming = os.path.join(store.root, INCOMING)
    junk = [f for f in os.listdir(incoming)] if os.path.isdir(incoming) else []
    return junk + [f for f in os.listdir(os.path.join(store.root, "blobs")) if f.startswith(".")]


def blob_gets(server, digest=""):
    return [r for r in server.requests if r["method"] == "GET" and "/blobs/" in r["path"] and digest in r["path"]]


def test_pull_stores_exact_bytes_and_tags(fake, store):
    desc = fake.add_image("demo/hello", ["1.0"], LAYERS)
    result = pull(f"{fake.host}/demo/hello:1.0", store)
    assert result.digest == desc["digest"]
    assert store.get_blob(desc["digest"]) == fake.manifests[("demo/hello", "1.0")][1]  # bytes, not re-serialized
    manifest = json.loads(store.get_blob(desc["digest"]))
    for d in [manifest["config"], *manifest["layers"]]:
        assert store.get_blob(d["digest"]) == fake.blobs[d["digest"]] and store.verify(d["digest"])
    assert store.tags() == {f"{fake.host}/demo/hello:1.0": desc["digest"]}
    assert [b.status for b in result.blobs] == ["fetched"] * 4
    assert leftovers(store) == []
    first = next(r for r in fake.requests if "/manifests/" in r["path"])
    assert first["headers"]["Accept"] == ACCEPT
    assert "fetched" in repr(result) and "<table>" in result._repr_html_()


def test_pull_only_what_is_missing(fake, store):
    fake.add_image("demo/base", ["1"], LAYERS[:2])
    fake.add_image("demo/app", ["1"], LAYERS)  # shares the two base layers
    pull(f"{fake.host}/demo/base:1", store)
    before = len(blob_gets(fake))
    result = pull(f"{fake.host}/demo/app:1", store)
    assert len(blob_gets(fake)) - before == 2  # the new config and the one new layer
    assert [b.status for b in result.blobs] == ["fetched", "exists", "exists", "fetched"]
    again = pull(f"{fake.host}/demo/app:1", store)
    assert len(blob_gets(fake)) - before == 2 and not again.fetched and again.bytes_fetched == 0


def test_docker_manifest_list_and_platform(fake, store):
    docker = (DOCKER_MANIFEST, "application/vnd.docker.container.image.v1+json",
              "application/vnd.docker.image.rootfs.diff.tar.gzip")
    amd = fake.add_image("lib/multi", [], [{"a": b"amd64"}], "amd64", media_types=docker)
    arm = fake.add_image("lib/multi", [], [{"a": b"arm64"}], "arm64", "v8", media_types=docker)
    index = fake.add_manifest("lib/multi", ["latest"], {
        "schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
            {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
            {**arm, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]})
    result = pull(f"{fake.host}/lib/multi", store, platform="linux/arm64")
    assert result.digest == arm["digest"] and result.index_digest == index["digest"]
    assert str(result.platform) == "linux/arm64/v8" and result.media_type == DOCKER_MANIFEST
    assert store.has_blob(index["digest"]) and not store.has_blob(amd["digest"])
    assert store.resolve(f"{fake.host}/lib/multi:latest")["platform"]["architecture"] == "arm64"
    result = pull(f"{fake.host}/lib/multi", store, platform="linux/amd64", tag="multi:amd64")
    assert result.digest == amd["digest"] and store.tags()["multi:amd64"] == amd["digest"]


def test_manifest_digest_is_checked(fake, store):
    desc = fake.add_image("demo/hello", ["1.0"], LAYERS[:1])
    fake.claimed_digests[("demo/hello", "1.0")] = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatchError, match="Docker-Content-Digest"):
        pull(f"{fake.host}/demo/hello:1.0", store)
    # fetched by digest: the bytes must hash to that digest, whatever the header says
    other = "sha256:" + "1" * 64
    fake.manifests[("demo/hello", other)] = fake.manifests[("demo/hello", desc["digest"])]
    fake.claimed_digests[("demo/hello", other)] = other
    with pytest.raises(DigestMismatchError):
        pull(f"{fake.host}/demo/hello@{other}", store)
    assert list(store.blobs()) == [] and store.tags() == {}


def test_tampered_blob_is_rejected_and_nothing_kept(fake, store):
    desc = fake.add_image("demo/hello", ["1.0"], LAYERS)
    layer = json.loads(fake.manifests[("demo/hello", "1.0")][1])["layers"][1]["digest"]
    fake.tamper.add(layer)
    events = Collect()
    with pytest.raises(DigestMismatchError) as info:
        pull(f"{fake.host}/demo/hello:1.0", store, progress=events, jobs=1)
    assert layer in str(info.value) and "nothing" in info.value.hint
    assert not store.has_blob(layer) and not store.has_blob(desc["digest"])
    assert store.tags() == {} and leftovers(store) == []
    assert events.statuses(layer)[-1] == "failed"


def test_oversized_blob_is_cut_off(fake, store):
    fake.add_image("demo/hello", ["1.0"], LAYERS[:1])
    layer = json.loads(fake.manifests[("demo/hello", "1.0")][1])["layers"][0]["digest"]
    fake.blobs[layer] += b"more than promised"
    with pytest.raises(DigestMismatchError, match="more than"):
        pull(f"{fake.host}/demo/hello:1.0", store)
    assert not store.has_blob(layer) and leftovers(store) == []


def test_broken_transfer_resumes_with_range(fake, store):
    fake.add_image("demo/hello", ["1.0"], LAYERS)
    layer = json.loads(fake.manifests[("demo/hello", "1.0")][1])["layers"][1]
    fake.drop_after[layer["digest"]] = 70_000
    result = pull(f"{fake.host}/demo/hello:1.0", store)
    gets = blob_gets(fake, layer["digest"])
    assert len(gets) == 2
    assert "Range" not in gets[0]["headers"] and gets[1]["headers"]["Range"] == "bytes=70000-"
    assert {b.digest: b.status for b in result.blobs}[layer["digest"]] == "resumed"
    assert store.verify(layer["digest"]) and leftovers(store) == []


def test_partial_kept_then_resumed_by_the_next_pull(fake, store):
    fake.add_image("demo/hello", ["1.0"], LAYERS)
    layer = json.loads(fake.manifests[("demo/hello", "1.0")][1])["layers"][1]
    fake.drop_after[layer["digest"]] = 50_000
    with pytest.raises(RegistryUnreachableError) as info:
        pull(f"{fake.host}/demo/hello:1.0", store, retries=0)
    partial = RegistryClient.partial_path(store, layer["digest"])
    assert partial in info.value.hint and os.path.getsize(partial) == 50_000
    assert os.path.basename(os.path.dirname(partial)).startswith("labkit")
    assert store.tags() == {}
    result = pull(f"{fake.host}/demo/hello:1.0", store)
    assert blob_gets(fake, layer["digest"])[-1]["headers"]["Range"] == "bytes=50000-"
    assert store.verify(layer["digest"]) and not os.path.exists(partial)
    assert {b.digest: b.status for b in result.blobs}[layer["digest"]] == "resumed"


def test_server_ignoring_range_restarts_from_zero(fake, store):
    fake.add_image("demo/hello", ["1.0"], LAYERS)
    layer = json.loads(fake.manifests[("demo/hello", "1.0")][1])["layers"][1]
    fake.honor_range = False
    with open(RegistryClient.partial_path(store, layer["digest"]), "wb") as f:
        f.write(fake.blobs[layer["digest"]][:1000])
    pull(f"{fake.host}/demo/hello:1.0", store)
    assert store.verify(layer["digest"]) and leftovers(store) == []


def test_corrupt_partial_fails_verification_then_is_gone(fake, store):
    fake.add_image("demo/hello", ["1.0"], LAYERS)
    layer = json.loads(fake.manifests[("demo/hello", "1.0")][1])["layers"][1]
    with open(RegistryClient.partial_path(store, layer["digest"]), "wb") as f:
        f.write(b"\0" * 1000)  # not the blob's first bytes
    with pytest.raises(DigestMismatchError):
        pull(f"{fake.host}/demo/hello:1.0", store)
    assert not store.has_blob(layer["digest"]) and leftovers(store) == []
    pull(f"{fake.host}/demo/hello:1.0", store)  # starts over and succeeds
    assert store.verify(layer["digest"])


def test_docker_hub_bearer_flow_on_loopback(store):
    """Play Docker Hub: reference 'busybox', challenge with realm/service/scope, one token per scope."""
    with FakeRegistry(auth="bearer") as hub:
        desc = hub.add_image("library/busybox", ["latest"], LAYERS)
        client = RegistryClient("docker.io", endpoint=hub.url)
        result = pull("busybox", store, client=client)
        assert result.digest == desc["digest"]
        assert store.tags() == {"docker.io/library/busybox:latest": desc["digest"]}
        assert hub.token_requests == [{"service": "registry.docker.io", "account": None,
                                       "scopes": ["repository:library/busybox:pull"]}]
        assert hub.requests[0]["path"] == "/v2/library/busybox/manifests/latest"
        gets = blob_gets(hub)
        assert gets and all(r["headers"]["Authorization"].startswith("Bearer tok-") for r in gets)
        pull("busybox", store, client=client, tag="again")  # cached token: no new token request
        assert len(hub.token_requests) == 1
        assert client.ping().challenges[0].scheme == "bearer"


def test_docker_hub_login_from_docker_config(store, tmp_path, monkeypatch):
    import base64
    (tmp_path / "config.json").write_text(json.dumps(
        {"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"alice:pw").decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    with FakeRegistry(auth="bearer", users={"alice": "pw"}) as hub:
        hub.add_image("alice/app", ["1"], LAYERS[:1])
        pull("alice/app:1", store, client=RegistryClient("docker.io", endpoint=hub.url))
        assert hub.token_requests[0]["account"] == "alice"
        bad = RegistryClient("docker.io", endpoint=hub.url, credentials=("alice", "nope"))
        with pytest.raises(UnauthorizedError) as info:
            pull("alice/app:1", store, client=bad)
        assert "token server refused these credentials" in info.value.hint


def test_basic_auth(store):
    with FakeRegistry(auth="basic", users={"bob": "pw"}) as reg:
        reg.add_image("demo/hello", ["1.0"], LAYERS[:1])
        with pytest.raises(UnauthorizedError) as info:
            pull(f"{reg.host}/demo/hello:1.0", store)
        assert "log in" in info.value.hint
        with pytest.raises(UnauthorizedError) as info:
            pull(f"{reg.host}/demo/hello:1.0", store, credentials=("bob", "wrong"))
        assert "'bob'" in info.value.hint
        pull(f"{reg.host}/demo/hello:1.0", store, credentials=("bob", "pw"))
        assert store.tags()


def test_redirected_blob_gets_no_credentials(store):
    with FakeRegistry(auth="bearer") as hub, FakeRegistry() as cdn:
        hub.add_image("library/busybox", ["latest"], LAYERS[:1])
        layer = json.loads(hub.manifests[("library/busybox", "latest")][1])["layers"][0]["digest"]
        cdn.blobs[layer] = hub.blobs[layer]
        hub.redirect[layer] = cdn.url
        pull("busybox", store, client=RegistryClient("docker.io", endpoint=hub.url))
        [get] = blob_gets(cdn)
        assert "Authorization" not in get["headers"] and store.verify(layer)
        hub.redirect[layer] = "http://10.255.255.1:9"  # plain HTTP off loopback: refused, never contacted
        with pytest.raises(InsecureRegistryError):
            RegistryClient("docker.io", endpoint=hub.url).fetch_blob("library/busybox", layer, None,
                                                                      Store(store.root + "2"))


def test_registry_errors(fake, store):
    fake.add_image("demo/hello", ["1.0"], LAYERS[:1])
    with pytest.raises(ManifestUnknownError) as info:
        pull(f"{fake.host}/demo/hello:2.0", store)
    assert "MANIFEST_UNKNOWN" in str(info.value) and "tag" in info.value.hint
    with pytest.raises(NameUnknownError):
        pull(f"{fake.host}/demo/nothing:1", store)
    fake.rate_limit = [True]
    fake.retry_after = 7
    with pytest.raises(TooManyRequestsError) as info:
        pull(f"{fake.host}/demo/hello:1.0", store)
    assert info.value.retry_after == 7 and "7 s" in info.value.hint
    fake.rate_limit = [True]
    fake.retry_after = 0
    client = RegistryClient(fake.host, rate_limit_wait=1)  # waits out a short Retry-After once
    assert pull(f"{fake.host}/demo/hello:1.0", store, client=client).digest


def test_unreachable_registry(store):
    from labkit.registry.local import free_port
    port = free_port()
    with pytest.raises(RegistryUnreachableError) as info:
        pull(f"127.0.0.1:{port}/demo/x:1", store)
    assert "running" in info.value.hint


def test_progress_events_and_text_bar(fake, store):
    fake.add_image("demo/hello", ["1.0"], LAYERS)
    events = Collect()
    result = pull(f"{fake.host}/demo/hello:1.0", store, progress=events, jobs=1)
    for blob in result.blobs:
        states = events.statuses(blob.digest)
        assert states[0] == "waiting" and states[-1] == "done" and "verifying" in states
    out = io.StringIO()
    pull(f"{fake.host}/demo/hello:1.0", Store(store.root + "-b"), progress=TextProgress(out), jobs=1)
    lines = out.getvalue().splitlines()
    assert sum("Pull complete" in line for line in lines) == 4 and "\r" not in out.getvalue()
    out = io.StringIO()
    pull(f"{fake.host}/demo/hello:1.0", store, progress=TextProgress(out))
    assert out.getvalue().count("Already exists") == 4
    assert isinstance(progress_bar("auto", out), TextProgress)  # headless: the text bar


def test_client_must_match_the_reference(fake, store):
    from labkit.registry import RegistryError
    with pytest.raises(RegistryError, match="the client is for"):
        pull("busybox", store, client=RegistryClient(fake.host))


def test_widget_progress_works_headless(fake, store):
    pytest.importorskip("ipywidgets")
    from labkit.registry import WidgetProgress
    fake.add_image("demo/hello", ["1.0"], LAYERS)
    bar = WidgetProgress()
    result = pull(f"{fake.host}/demo/hello:1.0", store, progress=bar)
    assert len(bar.bars) == len(result.blobs)
    assert all(w.value == 1.0 for w, _ in bar.bars.values())
