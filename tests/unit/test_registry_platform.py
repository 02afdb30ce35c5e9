"""Platform selection from an index / manifest list."""
from __future__ import annotations

import os

import pytest

from labkit.errors import LabkitError
from labkit.registry import Platform, PlatformNotFoundError, host_platform, select_manifest


def entry(digest_char, os_, arch, variant=None):
    p = {"os": os_, "architecture": arch}
    if variant:
        p["variant"] = variant
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + digest_char * 64,
            "size": 1, "platform": p}


INDEX = {"schemaVersion": 2, "manifests": [
    entry("0", "unknown", "unknown"),  # a build attestation: never chosen
    entry("1", "linux", "amd64"),
    entry("2", "linux", "arm64", "v8"),
    entry("3", "linux", "arm", "v7"),
    entry("4", "linux", "arm", "v6"),
    entry("5", "windows", "amd64"),
]}


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", "linux/amd64"), ("aarch64", "linux/arm64/v8"), ("arm64", "linux/arm64/v8"),
    ("armv7l", "linux/arm/v7"), ("armv6l", "linux/arm/v6"), ("i686", "linux/386"), ("s390x", "linux/s390x"),
    ("ppc64le", "linux/ppc64le"), ("riscv64", "linux/riscv64"),
])
def test_host_platform(machine, expected):
    assert str(host_platform(machine)) == expected


def test_host_platform_default_is_this_machine():
    assert host_platform() == host_platform(os.uname().machine)


@pytest.mark.parametrize("wanted, digit", [
    ("linux/amd64", "1"), ("linux/arm64", "2"), ("linux/arm64/v8", "2"), ("arm64", "2"),
    ("linux/arm/v7", "3"), ("linux/arm", "3"), ("linux/arm/v6", "4"), ("windows/amd64", "5"),
    (Platform("linux", "aarch64"), "2"),
])
def test_select(wanted, digit):
    assert select_manifest(INDEX, wanted)["digest"] == "sha256:" + digit * 64


def test_default_is_host():
    assert select_manifest(INDEX) == select_manifest(INDEX, host_platform())


def test_arm64_without_variant_matches_v8():
    index = {"manifests": [entry("7", "linux", "arm64")]}
    assert select_manifest(index, "linux/arm64/v8")["digest"] == "sha256:" + "7" * 64


def test_not_found_lists_what_there_is():
    with pytest.raises(PlatformNotFoundError) as info:
        select_manifest(INDEX, "linux/s390x")
    text = str(info.value)
    assert "linux/s390x" in text and "linux/arm64/v8" in text and "unknown" not in text
    assert "platform=" in info.value.hint


def test_parse_and_str():
    assert str(Platform.parse("linux/arm64")) == "linux/arm64/v8"
    assert str(Platform.parse("linux/amd64/v1")) == "linux/amd64"
    assert str(Platform.parse("linux/amd64/v3")) == "linux/amd64/v3"
    with pytest.raises(LabkitError, match="os/arch"):
        Platform.parse("linux//")
