"""Image archives without root: member names and links, manifest.json, chain ids, a save/load round
trip between two stores in temp dirs, tampering, `import --change`, and rmi's rules."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pytest

from labkit.engine.errors import Conflict, NotFound
from labkit.errors import LabkitError
from labkit.images import archive, inventory
from labkit.images.archive import ArchiveError
from labkit.images.base import apply_changes, new_config
from labkit.images.image import history_entry, write_image
from labkit.images.layers import diff_layer
from labkit.images.model import RunConfig
from labkit.images.store import REF_NAME, DigestError, Store


# --- names and links ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, clean", [("manifest.json", "manifest.json"), ("./blobs/sha256/ab", "blobs/sha256/ab"),
                                         ("a//b/./c", "a/b/c"), ("./", "")])
def test_member_names_are_cleaned(name, clean):
    assert archive.member_name(name) == clean


@pytest.mark.parametrize("name, why", [("/etc/passwd", "absolute"), ("../x", "'..'"), ("a/../../x", "'..'"),
                                       ("blobs/../../../root/.ssh/authorized_keys", "'..'")])
def test_escaping_member_names_are_refused(name, why):
    with pytest.raises(ArchiveError, match=why):
        archive.member_name(name)


def test_link_targets_resolve_inside_the_archive():
    layer = "d4e22f39314c40ecd7e4caabc66f1a35af6a0385185b69a15e5296e907145901/layer.tar"
    assert archive.link_target(layer, "../ca29.tar") == "ca29.tar"            # skopeo's and podman's layout
    assert archive.link_target("a/b/c", "../d/e") == "a/d/e"
    assert archive.link_target("x", "blobs/sha256/ab", hard=True) == "blobs/sha256/ab"   # hard: from the top


@pytest.mark.parametrize("name, target, hard", [("a/layer.tar", "../../etc/passwd", False), ("x", "/etc/passwd", False),
                                                ("x", "..", False), ("a/b", "../../..", False), ("x", "../y", True)])
def test_links_pointing_out_are_refused(name, target, hard):
    with pytest.raises(ArchiveError, match="absolute|outside"):
        archive.link_target(name, target, hard)


# --- manifest.json, names, chain ids ------------------------------------------------------------------
def test_docker_manifest_json_is_parsed():
    data = json.dumps([{"Config": "ab.json", "RepoTags": ["app:1", "app:latest"], "Layers": ["l1/layer.tar", "l2.tar"]},
                       {"Config": "cd.json", "RepoTags": None, "Layers": []}])
    one, two = archive.parse_docker_manifest(data)
    assert one == archive.DockerEntry("ab.json", ("app:1", "app:latest"), ("l1/layer.tar", "l2.tar"))
    assert two.repo_tags == () and two.layers == ()


@pytest.mark.parametrize("data, what", [("{", "not JSON"), ("[]", "non-empty list"),
                                        ('{"Config": "x"}', "non-empty list"),
                                        ('[{"RepoTags": [], "Layers": []}]', "no Config"),
                                        ('[{"Config": "c", "Layers": "l.tar"}]', "Layers"),
                                        ('[{"Config": "c", "Layers": [], "RepoTags": [1]}]', "RepoTags")])
def test_malformed_manifest_json_is_refused(data, what):
    with pytest.raises(ArchiveError, match=what):
        archive.parse_docker_manifest(data)


def test_digests_in_member_names():
    hexpart = "a" * 64
    assert archive.digest_in_name(f"{hexpart}.json") == f"sha256:{hexpart}"
    assert archive.digest_in_name(f"blobs/sha256/{hexpart}") == f"sha256:{hexpart}"
    assert archive.digest_in_name(f"{hexpart}.tar") == f"sha256:{hexpart}"
    assert archive.digest_in_name("config.json") is None and archive.digest_in_name(hexpart) is None


def test_chain_ids_follow_the_image_spec():
    a, b = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    chain = archive.chain_ids([a, b])
    assert chain[0] == a
    assert chain[1] == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert archive.chain_ids([]) == []


@pytest.mark.parametrize("name, tag", [("app", "app:latest"), ("docker.io/library/busybox:latest", "busybox:latest"),
                                       ("127.0.0.1:5000/demo/app:1", "127.0.0.1:5000/demo/app:1"),
                                       ("localhost/lkx:1", "localhost/lkx:1"), ("Not A Name", None),
                                       ("app@sha256:" + "0" * 64, None)])
def test_repo_tags_are_docker_familiar_names(name, tag):
    assert archive.repo_tag(name) == tag


def test_legacy_repositories_file():
    tops = [(["app:1", "app:2", "localhost:5000/x:y"], "top"), ([], "other"), (["none:1"], None)]
    assert archive.repositories(tops) == {"app": {"1": "top", "2": "top"}, "localhost:5000/x": {"y": "top"}}


def test_the_format_is_detected_by_its_marker_file():
    assert archive.archive_format(["manifest.json", "a.json"]) == archive.DOCKER_ARCHIVE
    assert archive.archive_format(["oci-layout", "index.json", "manifest.json"]) == archive.OCI_ARCHIVE  # docker ≥ 25
    with pytest.raises(ArchiveError, match="labkit import"):
        archive.archive_format(["bin/sh", "etc/passwd"])


# --- extraction of crafted archives -------------------------------------------------------------------
def tar_of(*entries) -> io.BytesIO:
    """entries: (name, bytes) files, (name, "->", target) symlinks, (name, "=>", target) hard links,
    (name, "dir"), (name, "chr")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry[0])
            if len(entry) == 3:
                info.type = tarfile.SYMTYPE if entry[1] == "->" else tarfile.LNKTYPE
                info.linkname = entry[2]
                tar.addfile(info)
            elif entry[1] == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry[1] == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
                tar.addfile(info)
            else:
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    buf.seek(0)
    return buf


def test_extract_hashes_files_and_resolves_links_by_name(tmp_path):
    found = archive.extract(tar_of(("ab.tar", b"layer"), ("id/layer.tar", "->", "../ab.tar"), ("hard", "=>", "ab.tar"),
                                   ("d", "->", "id"), ("empty", "dir")), str(tmp_path))
    assert found.digest("id/layer.tar") == ("sha256:" + hashlib.sha256(b"layer").hexdigest(), 5)
    assert found.resolve("d/layer.tar") == found.resolve("hard") == "ab.tar"
    assert sorted(os.listdir(tmp_path)) == ["ab.tar", "empty", "id"]     # links exist only as names
    assert os.listdir(tmp_path / "id") == []
    with pytest.raises(ArchiveError, match="no file"):
        found.resolve("id/missing")


@pytest.mark.parametrize("entries, what", [
    ((("../evil", b"x"),), "'..'"),
    ((("/abs", b"x"),), "absolute"),
    ((("l", "->", "../../etc"),), "outside"),
    ((("l", "->", "/etc"),), "absolute"),
    ((("l", "->", "sub"), ("l/evil", b"x")), "below the link"),
    ((("f", b"x"), ("f/evil", b"x")), "below the file"),
    ((("f", b"x"), ("f", b"y")), "twice"),
    ((("null", "chr"),), "character device"),
    ((("h", "=>", "../outside"),), "outside"),
])
def test_hostile_archives_are_refused(tmp_path, entries, what):
    with pytest.raises(ArchiveError, match=what):
        archive.extract(tar_of(*entries), str(tmp_path / "x"))
    assert not (tmp_path / "evil").exists()


def test_link_loops_are_refused(tmp_path):
    found = archive.extract(tar_of(("a", "->", "b"), ("b", "->", "a")), str(tmp_path))
    with pytest.raises(ArchiveError, match="too many levels"):
        found.resolve("a")


def test_not_a_tar_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match="not a readable tar"):
        archive.extract(io.BytesIO(b"hello, not a tar at all" * 40), str(tmp_path))


# --- save and load between two stores (no root: the layer's owners are fixed) --------------------------
@pytest.fixture
def image(tmp_path):
    store = Store(str(tmp_path / "a" / "images"))
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "greeting").write_text("hello from the archive\n")
    (tree / "top").write_text("second layer\n")
    lower = diff_layer(store, None, str(tree), mtime=0, owner=(0, 0))
    (tree / "top").write_text("changed\n")
    upper = diff_layer(store, None, str(tree), mtime=0, owner=(0, 0), compress=False)
    config = new_config(RunConfig(env=["PATH=/bin"], cmd=["cat", "/etc/greeting"]))
    config.rootfs["diff_ids"] = [lower.diff_id, upper.diff_id]
    config.history = [history_entry("one", "1970-01-01T00:00:00Z"), history_entry("two", "1970-01-01T00:00:00Z")]
    return write_image(store, config, [lower.descriptor(), upper.descriptor()], "app")


def saved(image, fmt=archive.DOCKER_ARCHIVE, refs=("app",)) -> bytes:
    out = io.BytesIO()
    archive.save(image.store, list(refs), out, fmt)
    return out.getvalue()


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar}


@pytest.mark.parametrize("fmt", archive.FORMATS)
def test_save_then_load_keeps_the_image_id_and_the_name(tmp_path, image, fmt):
    data = saved(image, fmt)
    assert saved(image, fmt) == data                                   # the same image, the same bytes
    other = Store(str(tmp_path / "b" / "images"))
    loaded = archive.load(other, io.BytesIO(data))
    assert [(item.names, item.id) for item in loaded] == [(["app:latest"], image.id)]
    assert loaded[0].lines() == ["Loaded image: app:latest"]
    got = inventory.find(other, "app").image
    assert got.id == image.id and got.diff_ids == image.diff_ids
    assert got.config.config.cmd == ["cat", "/etc/greeting"]
    if fmt == archive.OCI_ARCHIVE:
        assert got.digest == image.digest                              # OCI: the very same manifest


def test_docker_archive_layout(image):
    files = members(saved(image))
    manifest = json.loads(files["manifest.json"])
    config_name = image.id.split(":")[1] + ".json"
    chain = [c.split(":")[1] for c in archive.chain_ids(image.diff_ids)]
    assert manifest == [{"Config": config_name, "RepoTags": ["app:latest"],
                         "Layers": [f"{c}/layer.tar" for c in chain]}]
    assert files[config_name] == image.store.get_blob(image.id)         # byte for byte: the id survives
    for c, diff_id in zip(chain, image.diff_ids):                       # uncompressed, as docker load wants
        assert "sha256:" + hashlib.sha256(files[f"{c}/layer.tar"]).hexdigest() == diff_id
        assert json.loads(files[f"{c}/json"])["id"] == c and files[f"{c}/VERSION"] == b"1.0"
    assert json.loads(files[f"{chain[1]}/json"])["parent"] == chain[0]
    assert json.loads(files["repositories"]) == {"app": {"latest": chain[1]}}


def test_oci_archive_layout_and_saving_by_id_leaves_it_unnamed(image):
    files = members(saved(image, archive.OCI_ARCHIVE, ["app", image.id[:19]]))
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    entries = json.loads(files["index.json"])["manifests"]
    assert [e.get("annotations", {}).get(REF_NAME) for e in entries] == ["app:latest", None]
    assert {e["digest"] for e in entries} == {image.digest}
    docker = json.loads(members(saved(image, refs=[image.id]))["manifest.json"])
    assert docker[0]["RepoTags"] is None


@pytest.mark.parametrize("fmt", archive.FORMATS)
def test_several_images_in_one_archive_share_their_layers(tmp_path, image, fmt):
    store = image.store
    config = new_config(RunConfig(cmd=["true"]))
    config.rootfs["diff_ids"] = image.diff_ids[:1]
    base = write_image(store, config, image.layers[:1], "base:1")
    store.tag("app:2", image.descriptor.to_dict())
    data = saved(image, fmt, ["app", "base:1", "app:2"])
    layer_files = [n for n in members(data) if n.endswith("layer.tar") or n.startswith("blobs/sha256/")]
    assert len(layer_files) == len(set(layer_files))                   # the shared layer once
    other = Store(str(tmp_path / "b" / "images"))
    loaded = {tuple(item.names): item.id for item in archive.load(other, io.BytesIO(data))}
    if fmt == archive.DOCKER_ARCHIVE:                                  # one entry per image id
        assert loaded == {("app:latest", "app:2"): image.id, ("base:1",): base.id}
    else:                                                              # one index entry per name
        assert loaded == {("app:latest",): image.id, ("app:2",): image.id, ("base:1",): base.id}
    assert sorted(other.tags()) == ["app:2", "app:latest", "base:1"]


def test_gzip_compressed_archives_load(tmp_path, image):
    import gzip

    other = Store(str(tmp_path / "b" / "images"))
    assert archive.load(other, io.BytesIO(gzip.compress(saved(image))))[0].id == image.id


def rewrite(data: bytes, change) -> bytes:
    """The archive with change(name, content) -> new content applied to each file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src:
            content = src.extractfile(m).read() if m.isfile() else None
            if content is not None:
                content = change(m.name, content)
                m.size = len(content)
            dst.addfile(m, io.BytesIO(content) if content is not None else None)
    return out.getvalue()


def flip_in_layer(name: str, content: bytes) -> bytes:
    if name.endswith("layer.tar") or (name.startswith("blobs/") and content.startswith(b"\x1f\x8b")):
        i = content.index(b"hello from") if b"hello from" in content else len(content) // 2
        return content[:i] + b"j" + content[i + 1:]
    return content


@pytest.mark.parametrize("fmt", archive.FORMATS)
def test_a_tampered_layer_is_rejected_naming_the_digest_and_nothing_is_tagged(tmp_path, image, fmt):
    other = Store(str(tmp_path / "b" / "images"))
    with pytest.raises(DigestError) as err:
        archive.load(other, io.BytesIO(rewrite(saved(image, fmt), flip_in_layer)))
    assert "sha256:" in str(err.value) and ("tampered" in str(err.value))
    if fmt == archive.DOCKER_ARCHIVE:
        assert image.diff_ids[0] in str(err.value)                     # the diff_id the config promised
    assert other.tags() == {} and list(other.blobs()) == []            # no tag, no half image
    assert os.listdir(os.path.join(other.root, "blobs")) == ["sha256"]  # and no scratch left


def test_a_tampered_config_is_rejected(tmp_path, image):
    def edit(name, content):
        return content.replace(b'"cat"', b'"rm "') if name.endswith(".json") and name != "manifest.json" else content

    with pytest.raises(DigestError, match=image.id.split(":")[1]):
        archive.load(Store(str(tmp_path / "b")), io.BytesIO(rewrite(saved(image), edit)))


def test_loading_an_image_the_store_has_reuses_its_manifest(image):
    before = set(image.store.blobs())
    loaded = archive.load(image.store, io.BytesIO(saved(image)))
    assert loaded[0].digest == image.digest and set(image.store.blobs()) == before  # no uncompressed copy


# --- import --change ----------------------------------------------------------------------------------
def test_import_changes_edit_the_run_config():
    run = apply_changes(RunConfig(env=["PATH=/bin"], cmd=["sh"]),
                        ['CMD ["echo", "hi"]', "ENV A=1 B=two", "WORKDIR app", "USER 1000:1000", "ENTRYPOINT /init"])
    assert run.cmd == ["echo", "hi"]                        # CMD came first: ENTRYPOINT keeps it
    assert run.entrypoint == ["/bin/sh", "-c", "/init"]     # the shell form, as in a Dockerfile
    assert run.env == ["PATH=/bin", "A=1", "B=two"] and run.working_dir == "/app" and run.user == "1000:1000"
    assert apply_changes(RunConfig(cmd=["sh"]), ['ENTRYPOINT ["/bin/true"]']).cmd is None


@pytest.mark.parametrize("change", ["STOPSIGNAL TERM", "HEALTHCHECK NONE", "ONBUILD RUN x", "RUN echo", ""])
def test_unsupported_import_changes_are_refused_by_name(change):
    with pytest.raises(LabkitError, match="is not supported here") as err:
        apply_changes(RunConfig(), [change])
    assert (change.split()[0] if change else "empty") in str(err.value)


# --- rmi ------------------------------------------------------------------------------------------------
def test_rmi_untags_and_deletes_what_nothing_needs(image):
    store = image.store
    store.tag("app:2", image.descriptor.to_dict())
    first = inventory.remove(store, "app")
    assert first.lines() == ["Untagged: app:latest"]                   # another tag keeps the image
    second = inventory.remove(store, "app:2")
    assert second.lines()[:2] == ["Untagged: app:2", f"Deleted: {image.id}"]
    assert set(second.deleted) == {image.id, *(d.digest for d in image.layers)}
    assert list(store.blobs()) == [] and store.tags() == {}
    with pytest.raises(NotFound, match="No such image: app"):
        inventory.remove(store, "app")


def test_rmi_keeps_layers_other_images_share(image):
    store = image.store
    config = new_config(RunConfig(cmd=["true"]))
    config.rootfs["diff_ids"] = image.diff_ids[:1]
    base = write_image(store, config, image.layers[:1], "base")
    removed = inventory.remove(store, "app")
    assert image.layers[0].digest not in removed.deleted and image.layers[1].digest in removed.deleted
    assert inventory.find(store, "base").image.id == base.id


def test_rmi_conflicts_are_dockers(image):
    store, short = image.store, image.id.split(":")[1][:12]
    users = {image.id: [inventory.Use("f" * 64, running=False)]}
    with pytest.raises(Conflict) as err:
        inventory.remove(store, "app", users=users)
    assert str(err.value).startswith(f'conflict: unable to remove repository reference "app" (must force) - '
                                     f"container ffffffffffff is using its referenced image {short}")
    stopped = f"unable to delete {short} \\(must be forced\\) - image is being used by stopped"
    with pytest.raises(Conflict, match=stopped):
        inventory.remove(store, short, users=users)
    running = {image.id: [inventory.Use("e" * 64, running=True)]}
    with pytest.raises(Conflict, match="cannot be forced"):
        inventory.remove(store, image.id, force=True, users=running)
    forced = inventory.remove(store, "app", force=True, users=users)
    assert forced.lines() == ["Untagged: app:latest"] and store.has_blob(image.id)   # kept for the container
    assert inventory.find(store, short).image.id == image.id                           # dangling, found by id
    assert inventory.remove(store, short).deleted[0] == image.id                       # once no container uses it


def test_rmi_by_id_with_several_tags_needs_force(image):
    store = image.store
    store.tag("other", image.descriptor.to_dict())
    with pytest.raises(Conflict, match="referenced in multiple repositories"):
        inventory.remove(store, image.id)
    removed = inventory.remove(store, image.id, force=True)
    assert sorted(removed.untagged) == ["app:latest", "other:latest"] and removed.deleted[0] == image.id


def test_find_by_id_prefix_and_digest(image):
    store = image.store
    assert inventory.find(store, image.id[7:13]).tag is None
    assert inventory.find(store, image.digest).image.id == image.id
    assert inventory.find(store, "app:latest").tag == "app"             # docker's spelling finds the store's
    with pytest.raises(NotFound):
        inventory.find(store, "0000deadbeef")
