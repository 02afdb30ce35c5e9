"""`labkit save/load/import/rmi` as a user types them, against real peers: archives labkit
writes are loaded and run by podman and read by skopeo; archives podman and skopeo write are
loaded and run by labkit — in both formats, docker-archive and oci-archive. The image id (the
config digest) survives every trip, and a run prints the same in each tool.

Hostile and tampered archives are refused with nothing tagged; rmi follows docker's conflict
rules against the engine's containers; a rootfs tarball imported from stdin runs.

podman runs as root on private storage (--root/--runroot in a labkit-named temp dir), no
network, its cgroups under a labkit parent; all of it is removed afterwards.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

import pytest

from labkit.engine.containers import Engine
from labkit.images.store import Store
from test_peers_drive_labkit import _remove_cgroup_parent, _unmount_below  # the same podman clean-up

pytestmark = pytest.mark.peer
IMAGE = "lkarchive:1"
GREETING = "hello from an image archive\n"
# This machine's root lacks CAP_SYS_RESOURCE: podman's default ulimits would need it. No systemd: cgroupfs.
PODMAN_RUN = ["run", "--rm", "--runtime", "runc", "--network", "none", "--cgroup-parent", "/labkit-podman-archive",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(autouse=True)
def engine_env(engine_data_root, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA_ROOT", engine_data_root)
    yield
    Engine(engine_data_root).clear()


def lk(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    if "input" not in kw and "stdin" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    return subprocess.run(["labkit", *args], timeout=timeout, **kw)


def ok(result: subprocess.CompletedProcess):
    """Its stdout (bytes, or str with text=True), once it exited 0."""
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def app(engine_data_root, tmp_path_factory):
    """A two-layer image built by labkit: busybox + a COPY, with its own CMD."""
    context = tmp_path_factory.mktemp("labkit-archive-ctx")
    (context / "greeting").write_text(GREETING)
    (context / "Containerfile").write_text('FROM busybox\nCOPY greeting /greeting\nCMD ["cat", "/greeting"]\n')
    env = {**os.environ, "LABKIT_DATA_ROOT": engine_data_root}
    built = subprocess.run(["labkit", "build", str(context), "-t", IMAGE], capture_output=True, text=True, env=env,
                           timeout=300)
    assert built.returncode == 0, built.stderr
    return image_id(engine_data_root, IMAGE)


def image_id(engine_data_root: str, ref: str) -> str:
    from labkit.images import inventory

    return inventory.find(Store(os.path.join(engine_data_root, "images")), ref).image.id


# --- podman on private storage --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def podman(busybox_rootfs):
    if not shutil.which("podman"):
        pytest.fail("podman is not installed: ./lab.sh setup installs it")
    base = tempfile.mkdtemp(prefix="labkit-pmar-")  # short: podman refuses a runroot over 50 characters
    common = ["podman", "--root", f"{base}/storage", "--runroot", f"{base}/run", "--cgroup-manager", "cgroupfs",
              "--events-backend", "file"]

    def call(*args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 180)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run([*common, *args], **kw)

    rootfs = os.path.join(base, "rootfs.tar")
    with tarfile.open(rootfs, "w") as tar:
        tar.add(busybox_rootfs, arcname=".")
    assert call("import", rootfs, "localhost/lkbase:1").returncode == 0
    try:
        yield call
    finally:
        call("rm", "--all", "--force", "--time", "0")
        call("system", "reset", "--force")
        _unmount_below(base)
        _remove_cgroup_parent("labkit-podman-archive")
        shutil.rmtree(base, ignore_errors=True)


def podman_id(podman, ref: str) -> str:
    done = podman("image", "inspect", "--format", "{{.Id}}", ref)
    assert done.returncode == 0, done.stderr
    return "sha256:" + done.stdout.strip()


# --- labkit -> podman, podman -> labkit ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_loads_and_runs_what_labkit_saves(app, podman, tmp_path, fmt):
    path = str(tmp_path / f"app-{fmt}.tar")
    ok(lk("save", "--format", fmt, "-o", path, IMAGE))
    loaded = podman("load", "-i", path)
    assert loaded.returncode == 0, loaded.stderr
    assert "Loaded image: localhost/lkarchive:1" in loaded.stdout
    try:
        assert podman_id(podman, "localhost/lkarchive:1") == app              # the same config bytes: the same id
        ran = podman(*PODMAN_RUN, "localhost/lkarchive:1")                    # the image's own CMD
        assert (ran.returncode, ran.stdout) == (0, GREETING), ran.stderr
        assert ok(lk("run", "--rm", IMAGE, text=True)) == ran.stdout
    finally:
        podman("rmi", "--force", "localhost/lkarchive:1")


@pytest.fixture(scope="module")
def podman_app(podman, tmp_path_factory):
    """A two-layer image podman built (a COPY onto a rootfs it imported), with a CMD."""
    context = tmp_path_factory.mktemp("labkit-podman-ctx")
    (context / "greeting").write_text("built by podman\n")
    (context / "Containerfile").write_text('FROM localhost/lkbase:1\nCOPY greeting /greeting\n'
                                           'CMD ["cat", "/greeting"]\n')
    built = podman("build", "--pull=never", "-t", "localhost/pmapp:1", str(context))
    assert built.returncode == 0, built.stderr
    return podman_id(podman, "localhost/pmapp:1")


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_labkit_loads_and_runs_what_podman_saves(podman, podman_app, engine_data_root, tmp_path, fmt):
    path = str(tmp_path / f"pm-{fmt}.tar")
    saved = podman("save", "--format", fmt, "-o", path, "localhost/pmapp:1")
    assert saved.returncode == 0, saved.stderr
    assert ok(lk("load", "-i", path, text=True)) == "Loaded image: localhost/pmapp:1\n"
    try:
        assert image_id(engine_data_root, "localhost/pmapp:1") == podman_app
        ran = lk("run", "--rm", "localhost/pmapp:1", text=True)
        by_podman = podman(*PODMAN_RUN, "localhost/pmapp:1")
        assert (ran.returncode, ran.stdout) == (0, "built by podman\n") and by_podman.stdout == ran.stdout, ran.stderr
        script = ["sh", "-c", "ls -ln /bin | md5sum; cat /etc/passwd"]   # the image's files, as each tool sees them
        listing = ok(lk("run", "--rm", "localhost/pmapp:1", *script, text=True))
        assert listing == podman(*PODMAN_RUN, "localhost/pmapp:1", *script).stdout
    finally:
        ok(lk("rmi", "localhost/pmapp:1"))


def test_a_gzip_compressed_archive_loads_from_stdin(app, tmp_path):
    data = ok(lk("image", "save", IMAGE))            # stdout is a pipe here: the archive goes there
    assert tarfile.open(fileobj=io.BytesIO(data)).getmember("manifest.json")
    compressed = subprocess.run(["gzip", "-c"], input=data, capture_output=True).stdout
    ok(lk("rmi", IMAGE))
    try:
        assert ok(lk("image", "load", input=compressed)) == b"Loaded image: lkarchive:1\n"
        assert "lkarchive:1" in ok(lk("image", "ls", text=True))
        assert ok(lk("run", "--rm", IMAGE, text=True)) == GREETING
    finally:
        ok(lk("load", input=data))
        assert image_id(os.environ["LABKIT_DATA_ROOT"], IMAGE) == app


# --- skopeo ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_and_writes_both_formats(app, tmp_path):
    docker_tar, oci_tar = str(tmp_path / "d.tar"), str(tmp_path / "o.tar")
    ok(lk("save", "-o", docker_tar, IMAGE))
    ok(lk("save", "--format", "oci-archive", "-o", oci_tar, IMAGE))

    def skopeo(*args: str) -> str:
        done = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    # labkit's archives, read by skopeo: the config (the image id) is what labkit wrote
    for source in (f"docker-archive:{docker_tar}", f"oci-archive:{oci_tar}:lkarchive:1"):
        config = skopeo("inspect", "--config", "--raw", source)
        assert "sha256:" + hashlib.sha256(config.encode()).hexdigest() == app
    skopeo("copy", "-q", f"docker-archive:{docker_tar}", f"oci:{tmp_path}/layout:copied")
    # skopeo's archives, loaded and run by labkit
    skopeo("copy", "-q", f"oci:{tmp_path}/layout:copied", f"oci-archive:{tmp_path}/sk-o.tar:localhost/skopeo:oci")
    skopeo("copy", "-q", f"oci-archive:{oci_tar}:lkarchive:1",
           f"docker-archive:{tmp_path}/sk-d.tar:localhost/skopeo:docker")
    try:
        for name, path in (("localhost/skopeo:oci", "sk-o.tar"), ("localhost/skopeo:docker", "sk-d.tar")):
            assert ok(lk("load", "-i", str(tmp_path / path), text=True)) == f"Loaded image: {name}\n"
            assert ok(lk("run", "--rm", name, text=True)) == GREETING
    finally:
        lk("rmi", "localhost/skopeo:oci", "localhost/skopeo:docker")


# --- hostile and tampered archives ---------------------------------------------------------------------
def rewrite(data: bytes, change) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src:
            content = src.extractfile(m).read() if m.isfile() else None
            if content is not None:
                content = change(m.name, content)
                m.size = len(content)
            dst.addfile(m, io.BytesIO(content) if content is not None else None)
    return out.getvalue()


def test_tampered_archives_are_rejected_and_nothing_is_tagged(app, engine_data_root, tmp_path):
    store = Store(os.path.join(engine_data_root, "images"))
    tags, blobs = store.tags(), set(store.blobs())
    docker = ok(lk("save", IMAGE))
    config_name = app.split(":")[1] + ".json"
    manifest = json.loads(tarfile.open(fileobj=io.BytesIO(docker)).extractfile("manifest.json").read())
    top = manifest[0]["Layers"][-1]

    def evil_layer(name: str, content: bytes) -> bytes:
        return content.replace(GREETING.encode(), b"HELLO FROM AN IMAGE ARCHIVE\n") if name == top else content

    def evil_config(name: str, content: bytes) -> bytes:
        return content.replace(b'"cat"', b'"rm "') if name == config_name else content

    bad_layer = lk("load", input=rewrite(docker, evil_layer), text=False)
    assert bad_layer.returncode == 1 and b"tampered" in bad_layer.stderr
    diff_id = json.loads(store.get_blob(app))["rootfs"]["diff_ids"][-1]
    assert diff_id.encode() in bad_layer.stderr                            # names the digest it broke
    bad_config = lk("load", input=rewrite(docker, evil_config), text=False)
    assert bad_config.returncode == 1 and app.split(":")[1].encode() in bad_config.stderr
    oci = ok(lk("save", "--format", "oci-archive", IMAGE))
    bad_blob = lk("load", input=rewrite(oci, lambda n, c: c[:-1] + bytes([c[-1] ^ 1]) if n.startswith("blobs/")
                                        and len(c) > 10000 else c))
    assert bad_blob.returncode == 1 and b"does not match its digest" in bad_blob.stderr
    assert store.tags() == tags and set(store.blobs()) == blobs           # nothing tagged, nothing stored
    assert [n for n in os.listdir(os.path.join(store.root, "blobs")) if n.startswith(".")] == []


def evil_tar(*entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, link in entries:
            info = tarfile.TarInfo(name)
            if link is None:
                info.size = 5
                tar.addfile(info, io.BytesIO(b"owned"))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("entries, what", [
    ((("manifest.json", None), ("../../../../tmp/labkit-archive-escape", None)), b"'..'"),
    ((("/tmp/labkit-archive-escape", None),), b"absolute path"),
    ((("manifest.json", None), ("l", "../../../../tmp"), ("l/labkit-archive-escape", None)), b"outside the archive"),
    ((("d", "sub"), ("d/labkit-archive-escape", None)), b"below the link"),
])
def test_archives_whose_paths_escape_are_refused(engine_data_root, entries, what):
    store = Store(os.path.join(engine_data_root, "images"))
    tags = store.tags()
    done = lk("load", input=evil_tar(*entries))
    assert done.returncode == 1 and what in done.stderr and b"refused" in done.stderr, done.stderr
    assert not os.path.lexists("/tmp/labkit-archive-escape") and store.tags() == tags


# --- rmi against the engine's containers ------------------------------------------------------------------
def test_rmi_refuses_while_a_container_uses_the_image_unless_forced(app, engine_data_root, tmp_path):
    archive = str(tmp_path / "keep.tar")
    ok(lk("save", "-o", archive, IMAGE))
    cid = ok(lk("create", "--name", "archive-user", IMAGE, text=True)).strip()
    refused = lk("rmi", IMAGE, text=True)
    assert refused.returncode == 1
    assert (f'conflict: unable to remove repository reference "{IMAGE}" (must force) - container {cid[:12]} '
            f"is using its referenced image {app.split(':')[1][:12]}") in refused.stderr
    by_id = lk("image", "rm", app.split(":")[1][:12], text=True)
    assert by_id.returncode == 1 and "image is being used by stopped container" in by_id.stderr
    forced = lk("rmi", "-f", IMAGE, text=True)
    assert ok(forced) == f"Untagged: {IMAGE}\n"                            # untagged; kept for the container
    store = Store(os.path.join(engine_data_root, "images"))
    assert store.has_blob(app) and IMAGE not in store.tags()
    assert ok(lk("start", "-a", "archive-user", text=True)) == GREETING   # the container runs on
    ok(lk("rm", "archive-user"))
    layers = os.path.join(engine_data_root, "layers", "sha256")
    top_diff_id = json.loads(store.get_blob(app))["rootfs"]["diff_ids"][-1]
    assert os.path.isdir(os.path.join(layers, top_diff_id.split(":")[1]))
    deleted = ok(lk("rmi", app.split(":")[1][:12], text=True)).splitlines()  # dangling now: by id
    assert deleted[0] == f"Deleted: {app}" and all(line.startswith("Deleted: sha256:") for line in deleted)
    assert not store.has_blob(app)
    assert not os.path.exists(os.path.join(layers, top_diff_id.split(":")[1]))  # its unpacked layer too
    assert ok(lk("run", "--rm", "busybox", "true", text=True)) == ""          # the shared base layer stays
    assert ok(lk("load", "-i", archive, text=True)) == "Loaded image: lkarchive:1\n"   # back, for the others
    assert image_id(engine_data_root, IMAGE) == app


def test_rmi_reports_each_missing_image_and_goes_on(app):
    done = lk("rmi", "no-such-image:1", "0123456789ab", text=True)
    assert done.returncode == 1 and done.stderr.count("No such image") == 2


# --- import ----------------------------------------------------------------------------------------------
def test_import_a_rootfs_tarball_from_stdin_then_run_it(busybox_rootfs, engine_data_root, tmp_path):
    tree = tmp_path / "extra"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "imported").write_text("imported rootfs\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox_rootfs, arcname=".")
        tar.add(str(tree / "etc" / "imported"), arcname="./etc/imported")
    done = lk("import", "--change", 'CMD ["cat", "/etc/imported"]', "--change", "ENV GREETING=hi", "-",
              "lkimported:1", input=buf.getvalue())
    image = ok(done).decode().strip()
    assert image.startswith("sha256:") and len(image) == 71
    try:
        assert image_id(engine_data_root, "lkimported:1") == image
        assert ok(lk("run", "--rm", "lkimported:1", text=True)) == "imported rootfs\n"
        assert ok(lk("run", "--rm", "lkimported:1", "sh", "-c", "echo $GREETING", text=True)) == "hi\n"
        refused = lk("import", "--change", "HEALTHCHECK NONE", "-", input=buf.getvalue(), text=False)
        assert refused.returncode == 1 and b"HEALTHCHECK is not supported" in refused.stderr
    finally:
        ok(lk("rmi", "lkimported:1"))
    path = tmp_path / "rootfs.tar"
    path.write_bytes(buf.getvalue())
    untagged = ok(lk("import", str(path), text=True)).strip()            # no name: found by its id
    assert ok(lk("rmi", untagged, text=True)).splitlines()[0] == f"Deleted: {untagged}"


def test_save_refuses_a_terminal(app):
    master, slave = os.openpty()
    try:
        done = subprocess.run(["labkit", "save", IMAGE], stdout=slave, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert done.returncode == 1 and b"cowardly refusing to save to a terminal" in done.stderr
