"""Named volumes on a real filesystem: create/list/inspect/remove/prune, concurrent creates, and
Docker's copy-up from an image's layers (whiteouts, opaque dirs, symlinks never followed, owners)."""
import errno
import json
import multiprocessing
import os
import re
import shutil
import stat

import pytest

from labkit.engine import volumes
from labkit.engine.errors import Conflict, EngineError, Invalid, NotFound
from labkit.engine.volumes import ANONYMOUS_LABEL, VolumeStore
from labkit.images import base, image, layers
from labkit.images.bundle import default_layer_dirs
from labkit.images.model import RunConfig
from labkit.images.store import Store

MTIME = 1_600_000_000
LOCK_FILES = {".volumes.lock"}


@pytest.fixture
def store(tmp_path):
    return VolumeStore(str(tmp_path / "volumes"))


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return f.read()


def assert_no_view_left():
    root = volumes.views_root()
    assert not os.path.isdir(root) or os.listdir(root) == []
    assert "volume-views" not in host_mounts()
    assert multiprocessing.active_children() == []


# --- lifecycle ---------------------------------------------------------------------------------
def test_create_inspect_list_like_docker(store):
    vol = store.create("data", labels={"app": "db"})
    directory = os.path.join(store.root, "data")
    assert vol.mountpoint == os.path.join(directory, "_data") == store.path("data")
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o701
    assert stat.S_IMODE(os.stat(vol.mountpoint).st_mode) == 0o755
    info = store.inspect("data")
    assert info == {"CreatedAt": vol.created_at, "Driver": "local", "Labels": {"app": "db"},
                    "Mountpoint": vol.mountpoint, "Name": "data", "Options": {}, "Scope": "local"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["CreatedAt"])
    with open(os.path.join(directory, "volume.json")) as f:
        on_disk = json.load(f)
    assert on_disk["anonymous"] is False and on_disk["populated"] is False
    again = store.create("data", labels={"other": "x"})  # Docker: the existing volume, unchanged
    assert again == vol
    store.create("aa")
    assert [v.name for v in store.list()] == ["aa", "data"]


def test_unnamed_and_anonymous_volumes(store):
    named = store.create()
    assert re.fullmatch(r"[0-9a-f]{64}", named.name) and not named.anonymous
    anon = store.create(anonymous=True)
    assert anon.anonymous and store.inspect(anon.name)["Labels"] == {ANONYMOUS_LABEL: ""}
    assert repr(store.get(anon.name)).startswith(f"<Volume anonymous {anon.name[:12]} ")


@pytest.mark.parametrize("name,words", [("a", "too short"), ("../x", "invalid characters"),
                                        ("has space", "invalid characters"), (".hidden", "invalid characters")])
def test_bad_names_are_invalid(store, name, words):
    with pytest.raises(Invalid, match=re.escape(words)):
        store.create(name)


def test_missing_and_path_like_names_are_not_found(store, tmp_path):
    (tmp_path / "volume.json").write_text('{"Name": "x"}')  # a path outside the root must not be read
    for name in ("missing", "../", "..", "/etc"):
        with pytest.raises(NotFound, match=re.escape(f"no such volume: {name}")):
            store.get(name)
    with pytest.raises(NotFound):
        store.path("missing")


def test_remove_refuses_a_volume_in_use_even_with_force(store):
    store.create("db")
    for force in (False, True):
        with pytest.raises(Conflict) as info:
            store.remove("db", users=["abc123", "def456"], force=force)
        assert str(info.value).startswith("remove db: volume is in use - [abc123, def456]")
    assert store.remove("db") == "db"
    assert store.list() == [] and set(os.listdir(store.root)) == LOCK_FILES
    with pytest.raises(NotFound, match="no such volume: db"):
        store.remove("db")
    assert store.remove("db", force=True) == "db"  # force: a missing volume is no error


def test_prune_takes_anonymous_unused_volumes_unless_all(store):
    anon_used, anon_free = store.create(anonymous=True), store.create(anonymous=True)
    store.create("named")
    store.create("named-used")
    assert store.prune({anon_used.name, "named-used"}) == [anon_free.name]
    assert sorted(v.name for v in store.list()) == sorted([anon_used.name, "named", "named-used"])
    assert store.prune({anon_used.name, "named-used"}, all=True) == ["named"]
    assert store.prune(set(), all=True) == sorted([anon_used.name, "named-used"])
    assert set(os.listdir(store.root)) == LOCK_FILES


def test_cleanup_sweeps_what_a_crash_left(store):
    store.create("keep")
    for leftover in (".new-abc", ".removing-old"):
        os.makedirs(os.path.join(store.root, leftover, "_data"))
    assert sorted(store.cleanup()) == [".new-abc", ".removing-old"]
    assert [v.name for v in store.list()] == ["keep"]


def _create_after(root, barrier, out):
    barrier.wait()
    vol = VolumeStore(root).create("shared", labels={"pid": str(os.getpid())})
    out.put((vol.name, vol.created_at, vol.labels["pid"]))


def test_concurrent_creates_of_one_name_make_one_volume(store):
    ctx = multiprocessing.get_context("fork")
    n = 8
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_create_after, args=(store.root, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(set(results)) == 1  # every process got the same volume: one creator's labels
    assert [v.name for v in store.list()] == ["shared"]
    assert set(os.listdir(store.root)) == LOCK_FILES | {"shared"}  # no .new-* left behind


# --- copy-up from a plain directory --------------------------------------------------------------
def fix_times(root):
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))


def make_rich_tree(root):
    """Every kind of entry copy-up must keep. Returns root."""
    os.makedirs(root)
    os.chown(root, 1000, 1000)
    os.chmod(root, 0o750)
    with open(os.path.join(root, "keep.txt"), "w") as f:
        f.write("keep")
    os.chown(os.path.join(root, "keep.txt"), 1000, 1001)
    os.chmod(os.path.join(root, "keep.txt"), 0o640)
    with open(os.path.join(root, "hard1"), "w") as f:
        f.write("hard")
    os.link(os.path.join(root, "hard1"), os.path.join(root, "hard2"))
    with open(os.path.join(root, "suid"), "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(os.path.join(root, "suid"), 0o4755)
    with open(os.path.join(root, "xattr.txt"), "w") as f:
        f.write("x")
    os.setxattr(os.path.join(root, "xattr.txt"), "user.labkit", b"yes")
    os.symlink("/etc/shadow", os.path.join(root, "abs-link"))
    os.symlink("keep.txt", os.path.join(root, "rel-link"))
    os.symlink("/", os.path.join(root, "dir-link"))
    os.lchown(os.path.join(root, "rel-link"), 1000, 1000)
    os.mkfifo(os.path.join(root, "fifo"))
    os.mknod(os.path.join(root, "null"), stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(os.path.join(root, "null"), 0o666)  # mknod's mode passes through the umask
    os.mkdir(os.path.join(root, "sub"), 0o700)
    os.chown(os.path.join(root, "sub"), 1000, 1000)
    with open(os.path.join(root, "sub", "inner"), "w") as f:
        f.write("i")
    fix_times(root)
    return root


def assert_rich_copy(dst):
    st = os.stat(dst)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o750)  # the dir's own metadata too
    keep = os.lstat(os.path.join(dst, "keep.txt"))
    assert (keep.st_uid, keep.st_gid, stat.S_IMODE(keep.st_mode), keep.st_mtime) == (1000, 1001, 0o640, MTIME)
    h1, h2 = os.lstat(os.path.join(dst, "hard1")), os.lstat(os.path.join(dst, "hard2"))
    assert h1.st_ino == h2.st_ino and h1.st_nlink == 2
    assert stat.S_IMODE(os.lstat(os.path.join(dst, "suid")).st_mode) == 0o4755
    assert os.getxattr(os.path.join(dst, "xattr.txt"), "user.labkit") == b"yes"
    for name, target in (("abs-link", "/etc/shadow"), ("rel-link", "keep.txt"), ("dir-link", "/")):
        path = os.path.join(dst, name)
        assert os.path.islink(path) and os.readlink(path) == target  # copied as links, never followed
        assert os.lstat(path).st_mtime == MTIME
    assert os.lstat(os.path.join(dst, "rel-link")).st_uid == 1000
    assert stat.S_ISFIFO(os.lstat(os.path.join(dst, "fifo")).st_mode)
    null = os.lstat(os.path.join(dst, "null"))
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3) and stat.S_IMODE(null.st_mode) == 0o666
    sub = os.lstat(os.path.join(dst, "sub"))
    assert (sub.st_uid, stat.S_IMODE(sub.st_mode), sub.st_mtime) == (1000, 0o700, MTIME)
    assert open(os.path.join(dst, "sub", "inner")).read() == "i"


def test_populate_copies_everything_once(store, tmp_path):
    src = make_rich_tree(str(tmp_path / "src"))
    vol = store.create("rich")
    assert store.populate(vol, src) is True
    assert_rich_copy(vol.mountpoint)
    assert store.get("rich").populated
    for entry in os.listdir(vol.mountpoint):  # emptied by the user: stays empty
        path = os.path.join(vol.mountpoint, entry)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    assert store.populate(vol, src) is False and os.listdir(vol.mountpoint) == []


def test_populate_skips_a_volume_with_content_but_marks_it(store, tmp_path):
    src = make_rich_tree(str(tmp_path / "src"))
    vol = store.create("busy")
    with open(os.path.join(vol.mountpoint, "mine"), "w") as f:
        f.write("user data")
    assert store.populate(vol, src) is False
    assert os.listdir(vol.mountpoint) == ["mine"] and store.get("busy").populated
    other = store.create("nothing")
    assert store.populate(other, None) is False and store.get("nothing").populated


def test_a_failed_copy_leaves_the_volume_empty_and_unpopulated(store, tmp_path, monkeypatch):
    src = make_rich_tree(str(tmp_path / "src"))
    calls = []

    def full_disk(src_fd, dst_fd):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.write(dst_fd, b"partial")

    monkeypatch.setattr(volumes, "_copy_data", full_disk)
    vol = store.create("full")
    with pytest.raises(EngineError, match="No space left on device"):
        store.populate(vol, src)
    assert os.listdir(vol.mountpoint) == [] and not store.get("full").populated
    monkeypatch.undo()
    assert store.populate(vol, src) is True  # a retry starts afresh


def _populate_after(root, src, barrier, out):
    barrier.wait()
    out.put(VolumeStore(root).populate("race", src))


def test_concurrent_populates_copy_once(store, tmp_path):
    src = make_rich_tree(str(tmp_path / "src"))
    store.create("race")
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_populate_after, args=(store.root, src, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert results == [False, False, False, True]
    assert_rich_copy(store.path("race"))


# --- copy-up from an image's layers ------------------------------------------------------------------
def tree_a(root):
    data = os.path.join(root, "data")
    os.makedirs(os.path.join(data, "cache"))
    os.chown(data, 1000, 1000)
    os.chmod(data, 0o750)
    for name, text in (("keep.txt", "keep"), ("gone.txt", "gone"), ("cache/old1", "1"), ("cache/old2", "2")):
        with open(os.path.join(data, name), "w") as f:
            f.write(text)
    os.chown(os.path.join(data, "keep.txt"), 1000, 1001)
    os.chmod(os.path.join(data, "keep.txt"), 0o640)
    fix_times(root)


def tree_b(root):
    """Layer 2 on top of tree_a: gone.txt deleted (whiteout), cache/ emptied and refilled (opaque),
    and every other kind of entry added."""
    tree_a(root)
    data = os.path.join(root, "data")
    os.unlink(os.path.join(data, "gone.txt"))
    for old in ("old1", "old2"):
        os.unlink(os.path.join(data, "cache", old))
    with open(os.path.join(data, "cache", "new1"), "w") as f:
        f.write("new")
    rich = os.path.join(root, "rich")
    make_rich_tree(rich)
    for name in os.listdir(rich):
        if name != "keep.txt":
            os.rename(os.path.join(rich, name), os.path.join(data, name))
    shutil.rmtree(rich)
    os.symlink("/etc", os.path.join(data, "etc-link"))
    os.symlink("/etc", os.path.join(root, "hostetc"))
    fix_times(root)
    # Its entries changed, so /data did too: the layer then carries /data itself, with its owner
    # and mode (labkit's diff_trees leaves out an unchanged parent of changed entries).
    os.utime(data, (MTIME + 1, MTIME + 1))


@pytest.fixture(scope="module")
def image_lowers(lab_tmp, tmp_path_factory):
    """An image of three layers (busybox, tree_a, tree_b): its unpacked lowerdirs, top first."""
    images = Store(os.path.join(lab_tmp, "volumes-test-data", "images"))
    busybox = base.busybox_image(images)
    work = tmp_path_factory.mktemp("trees")
    a, b = str(work / "a"), str(work / "b")
    tree_a(a)
    tree_b(b)
    la = layers.diff_layer(images, None, a)
    lb = layers.diff_layer(images, a, b)
    config = base.new_config(RunConfig(cmd=["sh"]))
    config.rootfs["diff_ids"] = [*busybox.diff_ids, la.diff_id, lb.diff_id]
    img = image.write_image(images, config, [*busybox.layers, la.descriptor(), lb.descriptor()], "volume-test")
    lowers = default_layer_dirs(img).ensure_all(images, img.layers, img.diff_ids)
    return list(reversed(lowers))


def test_the_image_really_has_a_whiteout_and_an_opaque_dir(image_lowers):
    top = image_lowers[0]
    gone = os.lstat(os.path.join(top, "data", "gone.txt"))
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(os.path.join(top, "data", "cache"), "trusted.overlay.opaque") == b"y"


def test_populate_from_image_copies_the_merged_view(store, image_lowers):
    vol = store.create(anonymous=True)
    assert store.populate_from_image(vol, image_lowers, "/data") is True
    data = vol.mountpoint
    assert not os.path.lexists(os.path.join(data, "gone.txt"))          # the whiteout hid it
    assert os.listdir(os.path.join(data, "cache")) == ["new1"]           # the opaque dir hid old1, old2
    assert os.listxattr(os.path.join(data, "cache")) == []               # no overlayfs marks copied
    assert_rich_copy(data)
    assert os.readlink(os.path.join(data, "etc-link")) == "/etc"
    assert store.get(vol.name).populated
    assert_no_view_left()


def test_a_symlinked_mount_point_resolves_inside_the_image(store, image_lowers):
    with open("/etc/hostname") as f:
        assert f  # the host has files the image lacks: they must not show up
    for path in ("/data/etc-link", "/hostetc", "/data/../hostetc/"):
        vol = store.create(anonymous=True)
        assert store.populate_from_image(vol, image_lowers, path) is True
        assert sorted(os.listdir(vol.mountpoint)) == ["group", "os-release", "passwd"]  # busybox's /etc
        with open(os.path.join(vol.mountpoint, "passwd")) as f:
            assert f.read().startswith("root:x:0:0:root:/root:/bin/sh\n")
    assert_no_view_left()


def test_populate_from_image_without_that_dir_marks_populated(store, image_lowers):
    vol = store.create("nothing-there")
    assert store.populate_from_image(vol, image_lowers, "/no/such/dir") is False
    assert store.populate_from_image(store.create("a-file"), image_lowers, "/data/keep.txt") is False
    assert store.get("nothing-there").populated and os.listdir(vol.mountpoint) == []
    assert store.populate_from_image(store.create("scratch"), [], "/data") is False
    assert_no_view_left()


def test_a_populated_or_busy_volume_starts_no_helper(store, image_lowers, monkeypatch):
    vol = store.create("done")
    store.populate(vol, None)
    busy = store.create("busy")
    open(os.path.join(busy.mountpoint, "x"), "w").close()

    def no_helper(*args):
        raise AssertionError("a helper was started")

    monkeypatch.setattr(volumes, "_start_view_helper", no_helper)
    assert store.populate_from_image(vol, image_lowers, "/data") is False
    assert store.populate_from_image(busy, image_lowers, "/data") is False
    assert store.get("busy").populated


def test_image_dir_view_never_mounts_in_our_namespace(image_lowers):
    before = host_mounts()
    with volumes.image_dir_view(image_lowers, "/data") as view:
        assert view.startswith("/proc/") and "keep.txt" in os.listdir(view)
        assert host_mounts() == before
    assert host_mounts() == before
    assert_no_view_left()


def test_a_failing_view_helper_reports_and_cleans_up(tmp_path):
    with pytest.raises(Exception, match="cannot show the image's layers"):
        with volumes.image_dir_view([str(tmp_path / "no-such-layer")], "/"):
            pass
    assert_no_view_left()


# --- what oci_mounts emits, applied by labkit's runtime --------------------------------------------
def mount_lines(text):
    """{mount point: (per-mount options, optional fields, super options)} from mountinfo text."""
    out = {}
    for line in text.splitlines():
        if " - " not in line:
            continue  # the script's own output
        before, _, after = line.partition(" - ")
        fields = before.split()
        out[fields[4]] = (set(fields[5].split(",")), fields[6:], set(after.split()[2].split(",")))
    return out


def test_the_runtime_applies_what_oci_mounts_emits(store, tmp_path):
    from labkit import rootfs, runtime
    from labkit.engine import mounts

    root = rootfs.build_busybox_rootfs(str(tmp_path / "rootfs"))  # its own: targets get made in it
    host = tmp_path / "host"
    host.mkdir()
    (host / "file").write_text("host")
    store.create("vol")
    parsed = [mounts.parse_volume(f"{host}:/mnt/ro:ro"), mounts.parse_volume(f"{host}:/mnt/shared:rshared"),
              mounts.parse_volume("vol:/mnt/vol"), mounts.parse_tmpfs("/mnt/tmp:size=64m,mode=1770"),
              mounts.parse_mount("type=tmpfs,dst=/mnt/exec,tmpfs-size=1m,readonly"),
              mounts.parse_tmpfs("/mnt/exec2:exec,uid=7")]
    spec = runtime.default_spec(["sh", "-c", "cat /proc/self/mountinfo; echo x > /mnt/ro/new && echo WROTE;"
                                 "echo y > /mnt/vol/new && echo VOL"], rootfs=root)
    spec.mounts += mounts.oci_mounts(parsed, store.path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec.save(str(bundle))
    result = runtime.run(str(bundle))
    assert "WROTE" not in result.stdout and "Read-only file system" in result.stderr
    assert "VOL" in result.stdout and open(os.path.join(store.path("vol"), "new")).read() == "y\n"
    m = mount_lines(result.stdout)
    ro_opts, ro_optional, _ = m["/mnt/ro"]
    assert "ro" in ro_opts and not any(f.startswith(("shared:", "master:")) for f in ro_optional)  # rprivate
    assert any(f.startswith("shared:") for f in m["/mnt/shared"][1]) and "rw" in m["/mnt/shared"][0]
    opts, _, sb = m["/mnt/tmp"]
    assert {"rw", "nosuid", "nodev", "noexec"} <= opts and {"size=65536k", "mode=1770"} <= sb
    opts, _, sb = m["/mnt/exec"]
    assert {"ro", "noexec"} <= opts and "size=1024k" in sb
    opts, _, sb = m["/mnt/exec2"]
    assert "noexec" not in opts and {"nosuid", "nodev"} <= opts and "uid=7" in sb
    assert not (host / "new").exists()
