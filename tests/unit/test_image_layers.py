"""Layers: diff of two trees -> tar, apply tar -> tree, whiteouts, digests, and hostile tars."""
import gzip
import io
import os
import random
import shutil
import stat
import tarfile

import pytest

from image_trees import fix_times, mutate, random_tree
from labkit.errors import LabkitError
from labkit.images import changes, layers, unpack
from labkit.images.store import Store
from labkit.rootfs import tree_digest


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"))


def write(path, text="x", mode=0o644, mtime=1_700_000_000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def apply_fresh(store, layer_list, dest):
    os.makedirs(dest, exist_ok=True)
    for layer in layer_list:
        layers.apply_layer(store, layer.descriptor(), dest, diff_id=layer.diff_id)
    return dest


# --- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_diff_then_apply_reproduces_the_target_tree(tmp_path, store, seed):
    base = str(tmp_path / "base")
    random_tree(base, seed)
    first = layers.diff_layer(store, None, base)
    target = apply_fresh(store, [first], str(tmp_path / "target"))   # a copy, fifos included
    assert tree_digest(target) == tree_digest(base)
    rng = random.Random(1000 + seed)
    mutate(target, rng, 25)
    fix_times(target, rng)
    second = layers.diff_layer(store, base, target)
    out = apply_fresh(store, [first, second], str(tmp_path / "out"))
    assert tree_digest(out) == tree_digest(target)


def test_whiteouts_and_opaque_directories_both_ways(tmp_path, store):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    for tree in (old, new):
        write(f"{tree}/keep/same", "same")
    write(f"{old}/gone.txt")
    write(f"{old}/dir/a"), write(f"{old}/dir/b")        # dir emptied and refilled -> opaque
    write(f"{new}/dir/c")
    write(f"{old}/sub/x"), write(f"{old}/sub/y")        # one entry of two deleted -> whiteout
    write(f"{new}/sub/y")
    fix_times(old, random.Random(1)), fix_times(new, random.Random(1))
    found = {(c.path, c.kind) for c in changes.diff_trees(old, new)}
    assert ("gone.txt", changes.DELETE) in found
    assert ("dir", changes.OPAQUE) in found and ("dir/c", changes.ADD) in found
    assert ("sub/x", changes.DELETE) in found
    assert not any(p.startswith("keep") and k != changes.MODIFY for p, k in found)
    layer = layers.diff_layer(store, old, new)
    names = [m.name for m in layers.list_layer(store, layer.descriptor())]
    assert ".wh.gone.txt" in names and "dir/.wh..wh..opq" in names and "sub/.wh.x" in names
    out = str(tmp_path / "out")
    shutil.copytree(old, out, symlinks=True)
    report = layers.apply_layer(store, layer.descriptor(), out)
    assert (report.whiteouts, report.opaque_dirs) == (2, 1)
    assert sorted(os.listdir(f"{out}/dir")) == ["c"] and sorted(os.listdir(f"{out}/sub")) == ["y"]
    assert tree_digest(out) == tree_digest(new)


def test_a_whiteout_spares_entries_of_its_own_layer(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "old").write_text("lower")
    data = make_tar([("d/new", b"upper"), ("d/.wh..wh..opq", b""), ("d/.wh.new", b"")])
    unpack.apply_tar(io.BytesIO(data), str(root))
    assert os.listdir(root / "d") == ["new"]


def test_same_inputs_give_the_same_digests_and_gzip_is_not_the_diff_id(tmp_path, store):
    tree = str(tmp_path / "t")
    random_tree(tree, 7)
    a = layers.diff_layer(store, None, tree, mtime=0, owner=(0, 0))
    os.utime(tree, (1, 1))
    b = layers.diff_layer(store, None, tree, mtime=0, owner=(0, 0))
    assert a == b
    plain = layers.diff_layer(store, None, tree, compress=False, mtime=0, owner=(0, 0))
    assert plain.diff_id == a.diff_id            # same content ...
    assert plain.digest != a.digest              # ... different blob
    assert plain.digest == plain.diff_id         # uncompressed: blob digest is the diff_id
    with store.open_blob(a.digest) as f:
        head = f.read(10)
    assert head[:2] == b"\x1f\x8b" and head[4:8] == b"\0\0\0\0"   # gzip mtime 0
    members = layers.list_layer(store, a.descriptor())
    assert all(m.mtime == 0 and (m.uid, m.gid) == (0, 0) and m.uname == "" for m in members)
    names = [m.name.rstrip("/") for m in members]
    assert names == sorted(names, key=lambda n: n.split("/"))


def test_metadata_survives_setuid_hardlinks_symlinks_xattrs(tmp_path, store):
    tree = tmp_path / "t"
    write(f"{tree}/bin/su", "su", 0o4755)
    write(f"{tree}/bin/wall", "w", 0o2755)
    os.link(tree / "bin" / "su", tree / "bin" / "su2")
    os.symlink("/bin/su", tree / "bin" / "link")
    os.mkdir(tree / "tmp")
    os.chmod(tree / "tmp", 0o1777)
    try:
        os.setxattr(tree / "bin" / "wall", "user.labkit", b"\xffbinary")
        has_xattr = True
    except OSError:
        has_xattr = False
    layer = layers.diff_layer(store, None, str(tree))
    out = tmp_path / "out"
    apply_fresh(store, [layer], str(out))
    assert stat.S_IMODE(os.stat(out / "bin" / "su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(out / "bin" / "wall").st_mode) == 0o2755
    assert stat.S_IMODE(os.stat(out / "tmp").st_mode) == 0o1777
    assert os.stat(out / "bin" / "su").st_ino == os.stat(out / "bin" / "su2").st_ino
    assert os.readlink(out / "bin" / "link") == "/bin/su"
    if has_xattr:
        assert os.getxattr(out / "bin" / "wall", "user.labkit") == b"\xffbinary"


def test_import_tar_keeps_gzip_and_computes_the_diff_id(tmp_path, store):
    data = make_tar([("etc/hostname", b"box\n")])
    plain, zipped = tmp_path / "r.tar", tmp_path / "r.tar.gz"
    plain.write_bytes(data)
    zipped.write_bytes(gzip.compress(data))
    a, b = layers.import_tar(store, str(plain)), layers.import_tar(store, str(zipped))
    assert a.diff_id == b.diff_id == "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    with store.open_blob(b.digest) as f:
        assert f.read() == zipped.read_bytes()


def test_a_wrong_diff_id_is_detected(tmp_path, store):
    tree = tmp_path / "t"
    write(f"{tree}/f")
    layer = layers.diff_layer(store, None, str(tree))
    with pytest.raises(LabkitError, match="image config says"):
        layers.apply_layer(store, layer.descriptor(), str(tmp_path / "o"), diff_id="sha256:" + "0" * 64)


# --- hostile tars ----------------------------------------------------------------------------------
def make_tar(entries):
    """entries: (name, bytes) files, or (name, TarInfo-attrs dict)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, dict):
                for k, v in content.items():
                    setattr(info, k, v)
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


SYM, LNK, DIR = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE


@pytest.mark.parametrize("entries, message", [
    ([("../escape", b"x")], "'..'"),
    ([("a/../../escape", b"x")], "'..'"),
    ([("/etc/escape", b"x")], "absolute"),
    ([("evil", {"type": SYM, "linkname": "/"}), ("evil/escape", b"x")], "through the symlink"),
    ([("evil", {"type": SYM, "linkname": "../../.."}), ("evil/escape", b"x")], "through the symlink"),
    ([("d", {"type": DIR, "mode": 0o755}), ("d", {"type": SYM, "linkname": "/"}), ("d/escape", b"x")],
     "through the symlink"),
    ([("hl", {"type": LNK, "linkname": "../outside"})], "'..'"),
    ([("hl", {"type": LNK, "linkname": "/etc/passwd"})], "absolute"),
    ([("evil", {"type": SYM, "linkname": "/etc"}), ("hl", {"type": LNK, "linkname": "evil/passwd"})],
     "goes through the symlink"),
    ([(".wh...", b"")], "names '..'"),
])
def test_escaping_entries_are_refused_and_nothing_leaves_the_root(tmp_path, entries, message):
    root = tmp_path / "sandbox" / "root"
    root.mkdir(parents=True)
    (tmp_path / "outside").write_text("host file")
    with pytest.raises(unpack.LayerSecurityError, match=message):
        unpack.apply_tar(io.BytesIO(make_tar(entries)), str(root))
    assert sorted(os.listdir(tmp_path)) == ["outside", "sandbox"]
    assert (tmp_path / "outside").read_text() == "host file"
    assert not os.path.exists("/escape") and not os.path.exists("/etc/escape")


def test_a_symlink_entry_is_stored_not_followed(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    data = make_tar([("etc", {"type": SYM, "linkname": "/etc"}), ("etc", b"replaced the link, not /etc")])
    unpack.apply_tar(io.BytesIO(data), str(root))
    assert (root / "etc").is_file() and not (root / "etc").is_symlink()


def test_device_nodes_are_created_as_root_or_skipped_with_a_note(tmp_path, monkeypatch):
    data = make_tar([("dev/null2", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3, "mode": 0o666})])
    if os.geteuid() == 0:
        unpack.apply_tar(io.BytesIO(data), str(tmp_path / "a"))
        st = os.lstat(tmp_path / "a" / "dev" / "null2")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", refuse)  # what an unprivileged user gets
    report = unpack.apply_tar(io.BytesIO(data), str(tmp_path / "b"))
    assert not os.path.lexists(tmp_path / "b" / "dev" / "null2")
    assert any("skipped device node /dev/null2" in n for n in report.notes)


def test_overlayfs_xattrs_from_a_layer_are_dropped(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("d")
        info.type = DIR
        info.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y"}
        tar.addfile(info)
    report = unpack.apply_tar(io.BytesIO(buf.getvalue()), str(tmp_path / "r"))
    assert any("dropped overlayfs xattr" in n for n in report.notes)
