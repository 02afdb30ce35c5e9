"""OCI/Docker manifests, indexes, configs and platform matching: pure functions."""
import json

import pytest

from labkit.errors import LabkitError
from labkit.images import model, platform
from labkit.images.platform import Platform

D = "sha256:" + "a" * 64


def test_oci_manifest_round_trip_keeps_unknown_fields():
    doc = {"schemaVersion": 2, "mediaType": model.OCI_MANIFEST,
           "config": {"mediaType": model.OCI_CONFIG, "digest": D, "size": 7},
           "layers": [{"mediaType": model.OCI_LAYER_GZIP, "digest": D, "size": 9, "urls": ["x"]}],
           "subject": {"digest": D}, "artifactType": "x/y"}
    m = model.parse_document(json.dumps(doc).encode())
    assert isinstance(m, model.Manifest) and not m.is_docker
    assert m.layers[0].size == 9 and m.layers[0].extra == {"urls": ["x"]}
    assert m.to_dict() == doc


def test_docker_schema2_manifest_and_list_are_read_with_oci_meaning():
    manifest = {"schemaVersion": 2, "mediaType": model.DOCKER_MANIFEST,
                "config": {"mediaType": model.DOCKER_CONFIG, "digest": D, "size": 1},
                "layers": [{"mediaType": model.DOCKER_LAYER_GZIP, "digest": D, "size": 2}]}
    m = model.parse_document(manifest)
    assert isinstance(m, model.Manifest) and m.is_docker
    assert model.oci_media_type(m.layers[0].media_type) == model.OCI_LAYER_GZIP
    assert model.layer_compression(m.layers[0].media_type) == "gzip"
    lst = {"schemaVersion": 2, "mediaType": model.DOCKER_LIST, "manifests": [
        {"mediaType": model.DOCKER_MANIFEST, "digest": D, "size": 3,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}
    idx = model.parse_document(lst)
    assert isinstance(idx, model.Index)
    assert idx.manifests[0].platform == Platform("linux", "arm64", "v8")


def test_kind_from_shape_when_media_type_is_absent_and_schema1_refused():
    assert isinstance(model.parse_document({"schemaVersion": 2, "manifests": []}), model.Index)
    assert isinstance(model.parse_document({"schemaVersion": 2, "config": {"digest": D, "size": 1}, "layers": []}),
                      model.Manifest)
    with pytest.raises(LabkitError, match="schema1"):
        model.parse_document({"schemaVersion": 1, "fsLayers": []})
    with pytest.raises(LabkitError, match="unknown manifest media type"):
        model.parse_document({"mediaType": "text/plain"})
    with pytest.raises(LabkitError, match="not a layer media type"):
        model.layer_compression("application/json")
    assert model.layer_compression(model.OCI_LAYER) is None


def test_image_config_fields_and_diff_ids():
    doc = {"architecture": "arm64", "os": "linux", "variant": "v8", "created": "1970-01-01T00:00:00Z",
           "config": {"Env": ["A=1"], "Cmd": ["sh"], "User": "1000:1000", "WorkingDir": "/w",
                      "ExposedPorts": {"80/tcp": {}}, "Healthcheck": {"Test": ["NONE"]}},
           "rootfs": {"type": "layers", "diff_ids": [D]}, "history": [{"created_by": "x"}]}
    c = model.parse_config(json.dumps(doc))
    assert c.diff_ids == [D]
    assert c.platform == Platform("linux", "arm64", "v8")
    assert (c.config.env, c.config.cmd, c.config.user, c.config.working_dir) == (["A=1"], ["sh"], "1000:1000", "/w")
    assert c.config.extra == {"Healthcheck": {"Test": ["NONE"]}}
    assert c.to_dict() == doc
    assert model.parse_config({"rootfs": {"type": "layers", "diff_ids": []}, "config": None}).config.cmd is None
    with pytest.raises(LabkitError, match="rootfs.type"):
        model.parse_config({"rootfs": {"type": "other"}})


@pytest.mark.parametrize("text, expected", [
    ("linux/amd64", Platform("linux", "amd64", "")),
    ("x86_64", Platform("linux", "amd64", "")),
    ("aarch64", Platform("linux", "arm64", "v8")),
    ("linux/arm64", Platform("linux", "arm64", "v8")),
    ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ("linux/arm", Platform("linux", "arm", "v7")),
    ("armhf", Platform("linux", "arm", "v7")),
    ("linux/arm/7", Platform("linux", "arm", "v7")),
])
def test_platform_parse_normalizes(text, expected):
    assert Platform.parse(text) == expected


def test_platform_matching_rules():
    arm64 = Platform.parse("linux/arm64")
    assert platform.matches(arm64, Platform("linux", "arm64", ""))      # "" and v8 are the same
    assert platform.matches(arm64, Platform("linux", "arm64", "v8"))
    assert not platform.matches(arm64, Platform("linux", "amd64", ""))
    v7 = Platform.parse("linux/arm/v7")
    assert platform.matches(v7, Platform("linux", "arm", "v6"))          # older variants run
    assert not platform.matches(Platform.parse("linux/arm/v6"), Platform("linux", "arm", "v7"))
    amd = Platform.parse("linux/amd64")
    assert platform.matches(amd, Platform("linux", "amd64", "v1"))
    assert not platform.matches(amd, Platform("linux", "amd64", "v3"))
    assert platform.matches(Platform("linux", "amd64", "v3"), Platform("linux", "amd64", ""))
    assert not platform.matches(amd, Platform("windows", "amd64", ""))


def _entry(digest_char, os_, arch, variant=None):
    p = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": model.OCI_MANIFEST, "digest": "sha256:" + digest_char * 64, "size": 1, "platform": p}


def test_select_prefers_exact_then_older_variants_and_explains_a_miss():
    entries = [_entry("0", "unknown", "unknown"), _entry("1", "linux", "amd64"),
               _entry("2", "linux", "arm64", "v8"), _entry("3", "linux", "arm", "v6"), _entry("4", "linux", "arm", "v7")]
    assert platform.select(entries, "linux/amd64")["digest"][7] == "1"
    assert platform.select(entries, "aarch64")["digest"][7] == "2"
    assert platform.select(entries, "linux/arm/v7")["digest"][7] == "4"
    assert platform.select(entries[:4], "linux/arm/v7")["digest"][7] == "3"
    with pytest.raises(LabkitError, match="no variant for linux/s390x") as err:
        platform.select(entries, "linux/s390x")
    assert "linux/arm64/v8" in str(err.value)


def test_host_platform_is_a_go_name():
    host = platform.host_platform()
    assert host.os == "linux" and host.architecture in ("amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64")
