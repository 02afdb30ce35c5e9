"""Images in the store: write/open by tag, digest and platform; tampered blobs rejected, nothing kept."""
import json
import os
import shutil

import pytest

from labkit.errors import LabkitError
from labkit.images import base, image, layers, model
from labkit.images.layerdirs import LayerDirs
from labkit.images.model import Descriptor, RunConfig
from labkit.images.store import DigestError, Store


def small_image(store, tmp_path, tag="small", text="hello", compress=True):
    tree = tmp_path / f"tree-{tag}"
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "motd").write_text(text)
    layer = layers.diff_layer(store, None, str(tree), compress=compress, mtime=0, owner=(0, 0))
    config = base.new_config(RunConfig(cmd=["cat", "/etc/motd"]))
    config.rootfs["diff_ids"] = [layer.diff_id]
    return image.write_image(store, config, [layer.descriptor()], tag)


def leftovers(store):
    return [n for n in os.listdir(os.path.join(store.root, "blobs")) if n.startswith(".")]


def test_tags_move_digests_do_not(tmp_path):
    store = Store(str(tmp_path / "images"))
    one = small_image(store, tmp_path, "app", "v1")
    assert image.open_image(store, "app").digest == one.digest
    two = small_image(store, tmp_path / "2", "app", "v2")
    assert image.open_image(store, "app").digest == two.digest != one.digest
    pinned = image.open_image(store, one.digest)
    assert pinned.config.config.cmd == ["cat", "/etc/motd"] and pinned.digest == one.digest
    assert image.open_image(store, f"app@{one.digest}").digest == one.digest
    assert one.id == one.manifest.config.digest and one.diff_ids[0] != one.layers[0].digest


def test_an_index_is_narrowed_to_the_wanted_platform(tmp_path):
    store = Store(str(tmp_path / "images"))
    amd = small_image(store, tmp_path, "amd", "amd64")
    arm_cfg = base.new_config(RunConfig(cmd=["sh"]), platform=model.Platform("linux", "arm64", "v8"))
    arm_cfg.rootfs["diff_ids"] = amd.diff_ids
    arm = image.write_image(store, arm_cfg, amd.layers)
    index = model.Index(manifests=[
        Descriptor(model.OCI_MANIFEST, amd.digest, amd.descriptor.size, platform=model.Platform("linux", "amd64")),
        Descriptor(model.OCI_MANIFEST, arm.digest, arm.descriptor.size, platform=model.Platform("linux", "arm64", "v8"))])
    digest, size = store.put_json(index.to_dict())
    store.tag("multi", {"mediaType": model.OCI_INDEX, "digest": digest, "size": size})
    assert image.open_image(store, "multi", "linux/arm64").digest == arm.digest
    assert image.open_image(store, "multi", "linux/amd64").digest == amd.digest
    with pytest.raises(LabkitError, match="no variant for linux/s390x"):
        image.open_image(store, "multi", "linux/s390x")


def test_a_tampered_blob_in_a_layout_is_rejected_and_nothing_is_kept(tmp_path):
    source = Store(str(tmp_path / "source"))
    img = small_image(source, tmp_path)
    layer_path = source.blob_path(img.layers[0].digest)
    data = bytearray(open(layer_path, "rb").read())
    data[-12] ^= 0xFF
    os.chmod(layer_path, 0o644)
    open(layer_path, "wb").write(bytes(data))
    store = Store(str(tmp_path / "images"))
    with pytest.raises(DigestError, match="does not match the expected") as err:
        base.import_layout(store, source.root, "small", tag="imported")
    assert "nothing was stored" in err.value.hint
    assert not store.has_blob(img.layers[0].digest)
    assert not store.has_blob(img.digest)           # the manifest comes last: never dangling
    assert leftovers(store) == [] and store.tags() == {}


def test_a_truncated_blob_is_rejected(tmp_path):
    store = Store(str(tmp_path / "images"))
    with pytest.raises(DigestError, match="bytes, expected"):
        store.put_stream(iter([b"abc"]), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 4)
    assert leftovers(store) == []


def test_a_blob_tampered_on_disk_never_becomes_a_layer_dir(tmp_path):
    store = Store(str(tmp_path / "images"))
    img = small_image(store, tmp_path, compress=False)
    path = store.blob_path(img.layers[0].digest)
    data = open(path, "rb").read().replace(b"hello", b"HACKD")
    open(path, "wb").write(data)
    assert not store.verify(img.layers[0].digest)
    dirs = LayerDirs(str(tmp_path / "layers"))
    with pytest.raises(LabkitError, match="the image config says"):
        dirs.ensure(store, img.layers[0], img.diff_ids[0])
    assert dirs.list() == [] and os.listdir(os.path.join(dirs.root, "sha256")) == []


def test_a_corrupt_gzip_layer_is_a_clear_error(tmp_path):
    store = Store(str(tmp_path / "images"))
    digest = store.put_blob(b"\x1f\x8b\x08\x00" + b"garbage" * 10)
    desc = Descriptor(model.OCI_LAYER_GZIP, digest, 74)
    with pytest.raises(LabkitError, match="cannot be read"):
        layers.apply_layer(store, desc, str(tmp_path / "out"))


def test_layout_export_and_import_round_trip(tmp_path):
    store = Store(str(tmp_path / "images"))
    img = small_image(store, tmp_path)
    out = base.export_layout(img, str(tmp_path / "layout"), "exported")
    assert base.layout_refs(out) == ["exported"]
    other = Store(str(tmp_path / "other"))
    again = base.import_layout(other, out, "exported", tag="again")
    assert again.digest == img.digest and other.tags() == {"again": img.digest}
    with pytest.raises(LabkitError, match="0 images in"):
        base.import_layout(other, out, "missing")
    shutil.rmtree(os.path.join(out, "blobs"))
    with pytest.raises(LabkitError, match="lacks blob"):
        base.import_layout(Store(str(tmp_path / "third")), out, "exported")
    with pytest.raises(LabkitError, match="not an OCI image layout"):
        base.import_layout(other, str(tmp_path))


def test_import_rootfs_tarball(tmp_path):
    import tarfile
    tree = tmp_path / "rootfs"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    tarball = tmp_path / "rootfs.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname=".")
    store = Store(str(tmp_path / "images"))
    img = base.import_rootfs(store, str(tarball), "imported", RunConfig(cmd=["/bin/hello"]))
    assert img.layers[0].size == os.path.getsize(tarball)
    names = [m.name for m in layers.list_layer(store, img.layers[0])]
    assert "./bin/hello" in names
    assert json.loads(store.get_blob(img.id))["config"]["Cmd"] == ["/bin/hello"]
