"""Image references: parsing and Docker Hub normalization (no network)."""
from __future__ import annotations

import pytest

from labkit.errors import LabkitError
from labkit.registry import Reference, ReferenceError_, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, registry, repository, tag, digest", [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("alice/app:1.0", "docker.io", "alice/app", "1.0", None),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/library/busybox:musl", "docker.io", "library/busybox", "musl", None),
    ("registry-1.docker.io/alice/app", "docker.io", "alice/app", "latest", None),
    ("127.0.0.1:5000/demo/hello", "127.0.0.1:5000", "demo/hello", "latest", None),
    ("127.0.0.1:5000/hello:v2", "127.0.0.1:5000", "hello", "v2", None),
    ("localhost/foo", "localhost", "foo", "latest", None),
    ("localhost:5000/a/b/c:t", "localhost:5000", "a/b/c", "t", None),
    ("quay.io/org/img@" + D, "quay.io", "org/img", None, D),
    ("quay.io/org/img:1.0@" + D, "quay.io", "org/img", "1.0", D),
    ("[::1]:5000/x/y:z", "[::1]:5000", "x/y", "z", None),
    ("ghcr.io/o/my_app.v2__x-y", "ghcr.io", "o/my_app.v2__x-y", "latest", None),
    ("Registry.Example/x", "Registry.Example", "x", "latest", None),
])
def test_parse(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert parse_reference(str(ref)) == ref  # the normalized form parses to itself


def test_docker_hub_api_host_and_familiar_names():
    ref = parse_reference("busybox")
    assert ref.api_host == "registry-1.docker.io"
    assert str(ref) == "docker.io/library/busybox:latest"
    assert ref.familiar == "busybox:latest"
    assert parse_reference("alice/app:1").familiar == "alice/app:1"
    local = parse_reference("127.0.0.1:5000/demo/hello:1.0")
    assert local.api_host == "127.0.0.1:5000"
    assert local.familiar == "127.0.0.1:5000/demo/hello:1.0"
    assert local.name == "127.0.0.1:5000/demo/hello"


def test_ref_prefers_digest_and_with_helpers():
    ref = parse_reference("quay.io/org/img:1.0@" + D)
    assert ref.ref == D
    assert parse_reference("quay.io/org/img:1.0").ref == "1.0"
    assert ref.with_tag("2.0") == Reference("quay.io", "org/img", "2.0", None)
    assert parse_reference("x").with_digest(D).ref == D
    with pytest.raises(ReferenceError_):
        ref.with_tag("-bad")


@pytest.mark.parametrize("text", [
    "", " busybox", "busybox ", "Busybox", "a//b", "foo:", "foo@sha256:abc", "foo@md5:" + "a" * 32,
    "foo:-bar", "foo/-bar", "foo/bar_", "127.0.0.1:5000/UPPER", "x:" + "t" * 129, "a" * 256,
    "foo@" + D.upper(), "host:port:x/y",
])
def test_invalid_references_say_what_is_wrong(text):
    with pytest.raises(ReferenceError_) as info:
        parse_reference(text)
    assert isinstance(info.value, LabkitError)
    assert info.value.hint


def test_only_sha256_digests_are_supported():
    with pytest.raises(ReferenceError_, match="sha256"):
        parse_reference("foo@sha512:" + "a" * 128)
