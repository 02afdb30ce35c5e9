"""labkit.registry against a real registry: Debian's docker-registry (CNCF distribution) on
loopback, a token server and a recording proxy on loopback, and skopeo as a peer client."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest

from labkit import doctor
from labkit.images.store import Store
from labkit.registry import (DigestInvalidError, DigestMismatchError, LocalRegistry, ManifestUnknownError,
                             RegistryClient, TokenServer, UnauthorizedError, host_platform, pull, push)
from labkit.registry.client import INCOMING
from registry_helpers import RecordingProxy, make_image, make_index

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry") and not shutil.which("registry"),
                                reason="needs docker-registry (apt-get install docker-registry)")
needs_skopeo = pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo (apt-get install skopeo)")

LAYERS = [{"etc/os-release": b"ID=labkit\n"}, {"bin/tool": os.urandom(1_500_000)},
          {"srv/data": b"x" * 100_000, "srv/more": os.urandom(300_000)}]


@pytest.fixture(scope="module")
def registry():
    with LocalRegistry() as reg:
        yield reg
    assert not reg.running


@pytest.fixture
def src(tmp_path):
    store = Store(str(tmp_path / "labkit-src"))
    return store, make_image(store, LAYERS, tag="v1")


@pytest.fixture
def dst(tmp_path):
    return Store(str(tmp_path / "labkit-dst"))


def blobs_of(store, manifest_digest):
    manifest = store.get_json(manifest_digest)
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def leftovers(store):
    incoming = os.path.join(store.root, INCOMING)
    return (os.listdir(incoming) if os.path.isdir(incoming) else []) + \
        [f for f in os.listdir(os.path.join(store.root, "blobs")) if f.startswith(".")]


def test_local_registry_lifecycle():
    reg = LocalRegistry().start()
    root, pid = reg.root, reg.pid
    assert reg.client().ping().api_version == "registry/2.0"
    assert any(f"registry pid {pid}" in str(leak) for leak in doctor.leaks())
    process = reg.process
    reg.stop()
    assert process.returncode is not None and not reg.running  # stopped (and reaped) by its PID
    assert not os.path.exists(root)
    assert not any(f"registry pid {pid}" in str(leak) for leak in doctor.leaks())


def test_push_then_pull_gives_identical_digests(registry, src, dst):
    store, desc = src
    ref = registry.reference("demo/hello:1.0")
    pushed = push(store, "v1", ref)
    assert pushed.digest == desc["digest"] and [b.status for b in pushed.blobs] == ["uploaded"] * 4
    pulled = pull(ref, dst)
    assert pulled.digest == desc["digest"]
    assert dst.get_blob(desc["digest"]) == store.get_blob(desc["digest"])
    for digest in blobs_of(store, desc["digest"]):
        assert dst.get_blob(digest) == store.get_blob(digest) and dst.verify(digest)
    assert dst.tags() == {ref: desc["digest"]}
    assert registry.client().tags("demo/hello") == ["1.0"]
    # pushing again uploads nothing: HEAD finds every blob
    client = registry.client()
    again = push(store, "v1", ref, client=client)
    assert {b.status for b in again.blobs} == {"exists"}
    assert [r.method for r in client.log if "/blobs/" in r.path] == ["HEAD"] * 4


def test_chunked_upload_and_cross_repository_mount(registry, src, dst):
    store, desc = src
    client = registry.client()
    pushed = push(store, "v1", registry.reference("demo/chunked:1"), client=client, chunk_size=256 << 10)
    patches = [r for r in client.log if r.method == "PATCH"]
    assert len(patches) >= 6 and all(r.status == 202 for r in patches)
    assert all("Content-Range" in r.headers for r in patches)
    assert pull(registry.reference("demo/chunked:1"), dst).digest == pushed.digest
    client = registry.client()
    mounted = push(store, "v1", registry.reference("other/copy:1"), client=client, mount_from="demo/chunked")
    assert {b.status for b in mounted.blobs} == {"mounted"}
    posts = [r for r in client.log if r.method == "POST"]
    assert len(posts) == 4 and all("mount=sha256" in r.url and "from=demo%2Fchunked" in r.url for r in posts)
    assert not [r for r in client.log if r.method in ("PATCH",) or (r.method == "PUT" and "/blobs/" in r.path)]


def test_index_push_and_platform_pull(registry, tmp_path, dst):
    store = Store(str(tmp_path / "labkit-multi"))
    amd = make_image(store, [{"arch": b"amd64"}], tag=None, arch="amd64")
    arm = make_image(store, [{"arch": b"arm64"}], tag=None, arch="arm64", variant="v8")
    index = make_index(store, [(amd, {"os": "linux", "architecture": "amd64"}),
                               (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"})])
    pushed = push(store, "multi:1", registry.reference("demo/multi:1"))
    assert pushed.digest == index["digest"] and pushed.manifests == [amd["digest"], arm["digest"], index["digest"]]
    result = pull(registry.reference("demo/multi:1"), dst, platform="linux/arm64")
    assert result.digest == arm["digest"] and result.index_digest == index["digest"]
    host = pull(registry.reference("demo/multi:1"), dst, tag="host")
    expected = {"amd64": amd["digest"], "arm64": arm["digest"]}.get(host_platform().architecture)
    if expected:
        assert host.digest == expected


def test_tampered_blob_is_rejected_and_nothing_kept(registry, src, dst):
    store, desc = src
    push(store, "v1", registry.reference("demo/tamper:1"))
    layer = blobs_of(store, desc["digest"])[2]

    def flip(path, data):
        return bytes([data[0] ^ 0xFF]) + data[1:] if path.endswith(layer) and data else data

    with RecordingProxy(registry.port, mutate=flip) as proxy:
        with pytest.raises(DigestMismatchError) as info:
            pull(f"{proxy.host}/demo/tamper:1", dst)
    assert layer in str(info.value)
    assert not dst.has_blob(layer) and not dst.has_blob(desc["digest"])
    assert dst.tags() == {} and leftovers(dst) == []


def test_partial_blob_is_resumed_with_range(registry, src, dst):
    store, desc = src
    push(store, "v1", registry.reference("demo/resume:1"))
    layer = blobs_of(store, desc["digest"])[2]
    data = store.get_blob(layer)
    half = len(data) // 2
    with open(RegistryClient.partial_path(dst, layer), "wb") as f:
        f.write(data[:half])
    with RecordingProxy(registry.port) as proxy:
        result = pull(f"{proxy.host}/demo/resume:1", dst)
    [get] = [r for r in proxy.requests if r["method"] == "GET" and r["path"].endswith(layer)]
    assert get["headers"]["Range"] == f"bytes={half}-"
    assert {b.digest: b.status for b in result.blobs}[layer] == "resumed"
    assert dst.get_blob(layer) == data and leftovers(dst) == []


def test_layers_already_present_are_skipped(registry, src, dst):
    store, desc = src
    push(store, "v1", registry.reference("demo/skip:1"))
    config, *layers = blobs_of(store, desc["digest"])
    for digest in layers[:2]:  # as if another image with the same base layers was pulled before
        dst.put_blob(store.get_blob(digest), expected=digest)
    with RecordingProxy(registry.port) as proxy:
        first = pull(f"{proxy.host}/demo/skip:1", dst)
        blob_gets = [r["path"].rsplit("/", 1)[1] for r in proxy.requests
                     if r["method"] == "GET" and "/blobs/" in r["path"]]
        assert sorted(blob_gets) == sorted([config, layers[2]])
        assert [b.status for b in first.blobs] == ["fetched", "exists", "exists", "fetched"]
        second = pull(f"{proxy.host}/demo/skip:1", dst)
        assert proxy.count("GET", "/blobs/") == 2 and not second.fetched


def test_basic_auth_with_htpasswd(src, dst, tmp_path, monkeypatch):
    store, desc = src
    with LocalRegistry(users={"alice": "s3cret"}) as reg:
        assert reg.client().ping().challenges[0].scheme == "basic"
        with pytest.raises(UnauthorizedError) as info:
            push(store, "v1", reg.reference("demo/private:1"))
        assert "log in" in info.value.hint
        with pytest.raises(UnauthorizedError) as info:
            push(store, "v1", reg.reference("demo/private:1"), credentials=("alice", "wrong"))
        assert "'alice'" in info.value.hint
        push(store, "v1", reg.reference("demo/private:1"), credentials=("alice", "s3cret"))
        (tmp_path / "config.json").write_text(json.dumps(
            {"auths": {reg.host: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # as `docker login` leaves it
        assert pull(reg.reference("demo/private:1"), dst).digest == desc["digest"]


def test_bearer_token_flow(src, dst):
    store, desc = src
    with TokenServer(users={"bob": "pw"}, anonymous_pull=True) as tokens, LocalRegistry(token=tokens) as reg:
        [challenge] = reg.client().ping().challenges
        assert (challenge.scheme, challenge.realm, challenge.service) == ("bearer", tokens.realm, "labkit-registry")
        client = reg.client(credentials=("bob", "pw"))
        push(store, "v1", reg.reference("demo/tok:1"), client=client)
        assert pull(reg.reference("demo/tok:1"), dst, client=client).digest == desc["digest"]
        # one token for the push (pull,push), reused for the pull: cached per scope
        assert [(r["account"], r["scopes"]) for r in tokens.requests] == [("bob", ["repository:demo/tok:pull,push"])]
        # anonymous: pull is granted, push is not
        anonymous = Store(dst.root + "-anon")
        assert pull(reg.reference("demo/tok:1"), anonymous).digest == desc["digest"]
        with pytest.raises(UnauthorizedError):
            push(store, "v1", reg.reference("demo/tok:2"))
        with pytest.raises(UnauthorizedError) as info:
            pull(reg.reference("demo/tok:1"), anonymous, credentials=("bob", "wrong"))
        assert "token server refused" in info.value.hint


def test_registry_errors_are_clear(registry, src, dst):
    store, desc = src
    with pytest.raises(ManifestUnknownError) as info:
        pull(registry.reference("demo/absent:1"), dst)
    assert "MANIFEST_UNKNOWN" in str(info.value) and info.value.hint
    layer = blobs_of(store, desc["digest"])[1]
    path = store.blob_path(layer)
    with open(path, "r+b") as f:  # corrupt the local copy: the registry checks what it receives
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]))
    with pytest.raises(DigestInvalidError) as info:
        push(store, "v1", registry.reference("demo/corrupt:1"))
    assert "DIGEST_INVALID" in str(info.value) and "verify" in info.value.hint


def _skopeo(tmp_path, *args):
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    result = subprocess.run(["skopeo", "--policy", str(policy), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.peer
@needs_skopeo
def test_skopeo_copy_then_labkit_pull(registry, src, dst, tmp_path):
    store, desc = src
    _skopeo(tmp_path, "copy", "--dest-tls-verify=false", f"oci:{store.root}:v1",
            f"docker://{registry.reference('peer/from-skopeo:v1')}")
    result = pull(registry.reference("peer/from-skopeo:v1"), dst)
    assert result.digest == desc["digest"]
    for digest in blobs_of(store, desc["digest"]):
        assert dst.get_blob(digest) == store.get_blob(digest)


@pytest.mark.peer
@needs_skopeo
def test_labkit_push_then_skopeo_inspect(registry, src, tmp_path):
    store, desc = src
    ref = registry.reference("peer/from-labkit:v1")
    push(store, "v1", ref, chunk_size=512 << 10)
    info = json.loads(_skopeo(tmp_path, "inspect", "--tls-verify=false", f"docker://{ref}"))
    assert info["Digest"] == desc["digest"]
    assert info["Layers"] == blobs_of(store, desc["digest"])[1:]
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    raw = _skopeo(tmp_path, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    assert raw.encode() == store.get_blob(desc["digest"])
    out = tmp_path / "labkit-skopeo-layout"
    _skopeo(tmp_path, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{out}:v1")
    assert Store(str(out)).tags()["v1"] == desc["digest"]
