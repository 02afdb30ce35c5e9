"""Images on the real kernel: overlay rootfs, copy-up and whiteouts, deep images, hostile
layers, builds with RUN and the cache — and interop with umoci, skopeo, buildah, oci-image-tool."""
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import uuid

import pytest

from labkit import rootfs, runtime
from labkit.errors import LabkitError
from labkit.images import base, build, bundle, image, layers, overlay, unpack
from labkit.images.layerdirs import LayerDirs
from labkit.images.model import RunConfig
from labkit.images.store import Store

peer = pytest.mark.peer
pytestmark = pytest.mark.vm


def have(tool):
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed")


@pytest.fixture(scope="module")
def data_root(lab_tmp):
    path = os.path.join(lab_tmp, "images-data")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def store(data_root):
    return Store(os.path.join(data_root, "images"))


@pytest.fixture(scope="module")
def busybox(store):
    return base.busybox_image(store)


@pytest.fixture
def containers(data_root):
    made = []

    def new_bundle(img, args=None, **kw):
        path = os.path.join(data_root, "containers", uuid.uuid4().hex[:12])
        made.append(path)
        return bundle.create_bundle(img, path, args=args, **kw)

    yield new_bundle
    for path in made:
        bundle.delete_bundle(path)


def run(b, **kw):
    return runtime.run(b.path, **kw)


def flat_unpack(img, dest):
    """labkit's equivalent of `umoci unpack`: every layer applied in order onto one tree."""
    os.makedirs(dest)
    for desc, diff_id in zip(img.layers, img.diff_ids):
        layers.apply_layer(img.store, desc, dest, diff_id=diff_id)
    return dest


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return f.read()


# --- base images ----------------------------------------------------------------------------
def test_busybox_image_is_reproducible_and_holds_the_busybox_tree(tmp_path, busybox):
    again = base.busybox_image(Store(str(tmp_path / "other")))
    assert again.digest == busybox.digest and again.layers == busybox.layers
    reference = rootfs.build_busybox_rootfs(str(tmp_path / "reference"))
    assert rootfs.tree_digest(flat_unpack(busybox, str(tmp_path / "flat"))) == rootfs.tree_digest(reference)


# --- overlay rootfs: copy-up, whiteouts, opaque dirs, sharing --------------------------------
def test_copy_up_whiteouts_and_opaque_dirs_appear_in_the_upper_dir(busybox, containers):
    b = containers(busybox, ["sh", "-c", "echo guest:x:1000:1000::/:/bin/sh >> /etc/passwd; rm /bin/ls;"
                             "rm -rf /usr/sbin && mkdir /usr/sbin && touch /usr/sbin/new; echo hi > /tmp/new;"
                             "ls /usr/sbin; grep -c guest /etc/passwd"])
    result = run(b)
    assert (result.exit_code, result.stdout.split()) == (0, ["new", "1"])
    upper, lower = b.upper, b.overlay.lowers[0]
    with open(os.path.join(upper, "etc", "passwd")) as f:
        assert "guest" in f.read()                                            # copied up, then changed
    with open(os.path.join(lower, "etc", "passwd")) as f:
        assert "guest" not in f.read()                                        # the shared layer is untouched
    st = os.lstat(os.path.join(upper, "bin", "ls"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0                       # whiteout: char device 0/0
    assert os.getxattr(os.path.join(upper, "usr", "sbin"), "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(upper)) == ["bin", "etc", "tmp", "usr"]          # only what changed
    assert b.path not in host_mounts()                                        # mounted inside the container only


def test_containers_share_layers_and_do_not_see_each_others_changes(busybox, containers):
    one = containers(busybox, ["sh", "-c", "rm /bin/ls && echo changed > /etc/motd"])
    two = containers(busybox, ["sh", "-c", "ls / >/dev/null && cat /etc/motd 2>&1; echo $?"])
    assert one.overlay.lowers == two.overlay.lowers                          # one unpacked copy, by diff_id
    assert run(one).exit_code == 0
    assert run(two).stdout.strip().splitlines()[-1] == "1"                    # no /etc/motd here
    assert LayerDirs(os.path.join(os.path.dirname(busybox.store.root), "layers")).list() == busybox.diff_ids


def test_the_overlay_view_equals_the_flat_unpack(tmp_path, busybox, data_root):
    img = build_demo(tmp_path, busybox.store)
    flat = flat_unpack(img, str(tmp_path / "flat"))
    lowers = LayerDirs(os.path.join(data_root, "layers")).ensure_all(img.store, img.layers, img.diff_ids)
    ov = overlay.prepare(str(tmp_path / "labkit-ov"), lowers)
    code = "from labkit.rootfs import tree_digest; print(tree_digest('.'))"
    result = overlay.run_in_overlay(ov, [sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == rootfs.tree_digest(flat)
    assert str(tmp_path) not in host_mounts()


def test_a_deep_image_mounts_with_short_lowerdir_names(tmp_path, busybox, containers):
    store = busybox.store
    descs, diff_ids = list(busybox.layers), list(busybox.diff_ids)
    for i in range(150):
        tree = tmp_path / f"l{i}"
        (tree / "deep").mkdir(parents=True)
        (tree / "deep" / f"f{i:03d}").write_text(str(i))
        layer = layers.diff_layer(store, None, str(tree), mtime=0, owner=(0, 0))
        descs.append(layer.descriptor())
        diff_ids.append(layer.diff_id)
    config = base.new_config(RunConfig(cmd=["sh"]))
    config.rootfs["diff_ids"] = diff_ids
    deep = image.write_image(store, config, descs, "deep")
    b = containers(deep, ["sh", "-c", "ls /deep | wc -l; cat /deep/f149"])
    assert sum(len(p) + 1 for p in b.overlay.lowers) > 4096                  # full paths would not fit a page
    assert run(b).stdout.split() == ["150", "149"]


def test_a_user_namespace_is_refused_clearly(busybox, data_root):
    from labkit.runtime.spec import IDMapping, Namespace

    def with_userns(spec):
        spec.linux.namespaces.append(Namespace("user"))
        spec.linux.uidMappings = [IDMapping(0, 100000, 65536)]
        spec.linux.gidMappings = [IDMapping(0, 100000, 65536)]

    path = os.path.join(data_root, "containers", "userns")
    with pytest.raises(LabkitError, match="user namespace"):
        bundle.create_bundle(busybox, path, edit=with_userns)
    assert not os.path.exists(path)


def test_more_than_500_layers_are_refused(busybox, data_root):
    config = base.new_config(RunConfig(cmd=["sh"]))
    config.rootfs["diff_ids"] = busybox.diff_ids * 501
    too_deep = image.write_image(busybox.store, config, busybox.layers * 501, "too-deep")
    path = os.path.join(data_root, "containers", "too-deep")
    with pytest.raises(LabkitError, match="at most 500"):
        bundle.create_bundle(too_deep, path)
    assert not os.path.exists(path)


# --- hostile and tampered images -----------------------------------------------------------------
def hostile_image(store, lab_tmp, victim):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("evil")
        link.type, link.linkname = tarfile.SYMTYPE, victim
        tar.addfile(link)
        payload = tarfile.TarInfo("evil/pwned")
        payload.size = 5
        tar.addfile(payload, io.BytesIO(b"owned"))
    path = os.path.join(lab_tmp, "hostile.tar")
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return base.import_rootfs(store, path, "hostile")


def test_a_symlink_escape_image_is_refused_and_writes_nothing(busybox, lab_tmp, data_root):
    victim = os.path.join(lab_tmp, "victim")
    os.makedirs(victim, exist_ok=True)
    img = hostile_image(busybox.store, lab_tmp, victim)
    path = os.path.join(data_root, "containers", "hostile")
    with pytest.raises(unpack.LayerSecurityError, match="through the symlink"):
        bundle.create_bundle(img, path)
    assert os.listdir(victim) == [] and not os.path.exists(path)
    assert img.diff_ids[0] not in LayerDirs(os.path.join(data_root, "layers")).list()


def test_a_blob_tampered_in_the_store_is_not_unpacked(tmp_path, busybox):
    store = Store(str(tmp_path / "images"))
    img = base.import_layout(store, base.export_layout(busybox, str(tmp_path / "layout"), "bb"), "bb")
    blob = store.blob_path(img.layers[0].digest)
    with open(busybox.store.blob_path(busybox.layers[0].digest), "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0x01
    with open(blob, "wb") as f:
        f.write(data)
    with pytest.raises(LabkitError):
        bundle.create_bundle(img, str(tmp_path / "bundle"), layers=LayerDirs(str(tmp_path / "layers")))
    assert LayerDirs(str(tmp_path / "layers")).list() == [] and not os.path.exists(tmp_path / "bundle")


# --- build -----------------------------------------------------------------------------------------
DEMO = r"""
ARG BASE=busybox
FROM $BASE
ARG GREETING=hello
ENV APP=/app MODE="fast mode"
WORKDIR $APP
COPY hello.txt ./
COPY conf/ /etc/demo/
RUN echo "$GREETING $MODE" > greeting && rm -rf /home && rm /bin/vi && mkdir -p /var/spool/x
RUN ["/bin/sh", "-c", "rm -rf /var/spool && mkdir /var/spool && echo new > /var/spool/n"]
USER nobody
EXPOSE 8080 53/udp
LABEL org.example.name="demo"
CMD ["sh", "-c", "id -u; pwd; cat greeting; ls /var/spool; cat /etc/demo/a.conf; test -e /home || echo no-home"]
"""


def demo_context(tmp_path):
    ctx = tmp_path / "ctx"
    if not ctx.exists():
        (ctx / "conf").mkdir(parents=True)
        (ctx / "hello.txt").write_text("hello\n")
        (ctx / "conf" / "a.conf").write_text("a=1\n")
        (ctx / "Containerfile").write_text(DEMO)
    return str(ctx)


def build_demo(tmp_path, store, **kw):
    return build.build(demo_context(tmp_path), store, tag="demo", **kw).image


def test_build_runs_steps_in_containers_and_the_image_runs(tmp_path, busybox, containers):
    result = build.build(demo_context(tmp_path), busybox.store, tag="demo", use_cache=False)
    img = result.image
    assert len(img.layers) == 5 and [s.cached for s in result.steps if s.layer] == [False] * 4
    run_layers = [[m.name for m in layers.list_layer(img.store, d)] for d in img.layers[3:]]
    assert ".wh.home" in run_layers[0] and "bin/.wh.vi" in run_layers[0]
    assert "var/spool/.wh..wh..opq" in run_layers[1]
    assert not any(n.startswith(("proc", "sys", "dev")) for n in run_layers[0] + run_layers[1])
    out = run(containers(img))
    assert out.exit_code == 0, out.stderr
    assert out.stdout.split("\n")[:6] == ["65534", "/app", "hello fast mode", "n", "a=1", "no-home"]
    assert containers(img).spec.annotations["org.opencontainers.image.exposedPorts"] == "53/udp,8080/tcp"


def test_rebuild_hits_the_cache_and_builds_are_reproducible(tmp_path, busybox, lab_tmp):
    first = build.build(demo_context(tmp_path), busybox.store, tag="demo")
    began = time.monotonic()
    again = build.build(demo_context(tmp_path), busybox.store, tag="demo")
    cached_seconds = time.monotonic() - began
    assert again.cache_hits == 4 and again.image.digest == first.image.digest
    assert all(s.output == "" for s in again.steps)       # nothing ran
    assert cached_seconds < 2
    fresh_root = os.path.join(lab_tmp, "images-fresh")
    fresh = Store(os.path.join(fresh_root, "images"))
    base.busybox_image(fresh)
    try:
        other = build.build(demo_context(tmp_path), fresh, use_cache=False)
        assert other.image.digest == first.image.digest  # same inputs, another machine's store, no cache
    finally:
        shutil.rmtree(fresh_root, ignore_errors=True)


def test_a_failing_run_step_reports_its_output(tmp_path, busybox):
    ctx = tmp_path / "bad"
    ctx.mkdir()
    (ctx / "Containerfile").write_text("FROM busybox\nRUN echo about to fail && false\n")
    with pytest.raises(build.BuildError, match="exited with code 1") as err:
        build.build(str(ctx), busybox.store)
    assert "about to fail" in err.value.hint
    assert os.listdir(os.path.join(os.path.dirname(busybox.store.root), "build")) == []


# --- peers ---------------------------------------------------------------------------------------
@peer
@have("umoci")
def test_umoci_unpack_and_labkit_give_identical_trees(tmp_path, busybox):
    img = build_demo(tmp_path, busybox.store)
    dest = tmp_path / "umoci-bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{img.store.root}:demo", str(dest)], check=True,
                   capture_output=True)
    assert sorted(os.listdir(dest)) == sorted(["config.json", "rootfs", "umoci.json",
                                               f"sha256_{img.digest[7:]}.mtree"])  # umoci's extras: outside rootfs
    flat = flat_unpack(img, str(tmp_path / "labkit-flat"))
    assert rootfs.tree_digest(str(dest / "rootfs")) == rootfs.tree_digest(flat)
    assert not os.path.exists(os.path.join(flat, "home")) and os.listdir(os.path.join(flat, "var", "spool")) == ["n"]


@peer
@have("oci-image-tool")
def test_oci_image_tool_validates_labkit_layouts(tmp_path, busybox):
    build_demo(tmp_path, busybox.store)

    def validate(kind, path, *ref):
        result = subprocess.run(["oci-image-tool", "validate", "--type", kind, *ref, path],
                                capture_output=True, text=True)
        assert result.returncode == 0 and "Validation succeeded" in result.stdout, result.stderr

    validate("imageIndex", os.path.join(busybox.store.root, "index.json"))
    for tag in ("busybox", "demo"):
        img = image.open_image(busybox.store, tag)
        validate("manifest", busybox.store.blob_path(img.digest))
        validate("config", busybox.store.blob_path(img.id))
        # The whole image (layout, manifest, config, layer blobs): this rc1 tool still looks for the
        # pre-1.0 ref annotation, so it can only pick the image out of a one-image layout.
        layout = base.export_layout(img, str(tmp_path / f"layout-{tag}"), tag)
        validate("image", layout, "--ref", f"name={tag}")


@peer
@have("umoci")
def test_an_image_made_by_umoci_runs_under_labkit(tmp_path, busybox, containers):
    layout = str(tmp_path / "umoci-layout")
    tree = rootfs.build_busybox_rootfs(str(tmp_path / "tree"))
    for cmd in (["init", "--layout", layout], ["new", "--image", f"{layout}:base"],
                ["insert", "--image", f"{layout}:base", tree, "/"],
                ["config", "--image", f"{layout}:base", "--config.cmd", "sh", "--config.cmd", "-c",
                 "--config.cmd", "echo from umoci; id -u", "--config.user", "65534"]):
        subprocess.run(["umoci", *cmd], check=True, capture_output=True)
    img = base.import_layout(busybox.store, layout, "base", tag="from-umoci")
    assert run(containers(img)).stdout.split("\n")[:2] == ["from umoci", "65534"]


@peer
@have("buildah")
def test_an_image_made_by_buildah_runs_under_labkit(tmp_path, busybox, containers, lab_tmp):
    root = os.path.join(lab_tmp, "buildah")
    cmd = ["buildah", "--root", f"{root}/root", "--runroot", f"{root}/run", "--storage-driver", "vfs"]
    tree = rootfs.build_busybox_rootfs(str(tmp_path / "tree"))
    layout = str(tmp_path / "buildah-layout")
    ctr = subprocess.run([*cmd, "from", "scratch"], check=True, capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run([*cmd, "copy", ctr, tree + "/", "/"], check=True, capture_output=True)
        subprocess.run([*cmd, "config", "--cmd", "echo from buildah", "--workingdir", "/tmp", ctr], check=True,
                       capture_output=True)
        subprocess.run([*cmd, "commit", "-q", ctr, f"oci:{layout}:img"], check=True, capture_output=True)
    finally:
        subprocess.run([*cmd, "rm", ctr], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    img = base.import_layout(busybox.store, layout, "img", tag="from-buildah")
    b = containers(img)
    assert b.spec.process.cwd == "/tmp"
    assert run(b).stdout == "from buildah\n"


@peer
@have("skopeo")
def test_skopeo_reads_and_copies_labkit_layouts(tmp_path, busybox, containers):
    build_demo(tmp_path, busybox.store)
    inspect = subprocess.run(["skopeo", "inspect", f"oci:{busybox.store.root}:demo"], check=True,
                             capture_output=True, text=True)
    demo = image.open_image(busybox.store, "demo")
    assert json.loads(inspect.stdout)["Layers"] == [d.digest for d in demo.layers]
    copy = tmp_path / "skopeo-copy"
    subprocess.run(["skopeo", "copy", f"oci:{busybox.store.root}:demo", f"oci:{copy}:demo"], check=True,
                   capture_output=True)
    other = Store(str(tmp_path / "images"))
    again = base.import_layout(other, str(copy), "demo")
    assert again.digest == demo.digest                    # byte-identical round trip
    b = containers(again, ["cat", "/app/greeting"], layers=LayerDirs(str(tmp_path / "layers")))
    assert run(b).stdout == "hello fast mode\n"
