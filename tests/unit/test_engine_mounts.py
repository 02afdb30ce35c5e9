"""-v, --mount and --tmpfs parsing (Docker's rules and messages) and the OCI mounts they become."""
import os

import pytest

from labkit.engine import mounts
from labkit.engine.errors import Invalid
from labkit.engine.mounts import oci_mounts, parse_mount, parse_tmpfs, parse_volume
from labkit.engine.records import Mount
from labkit.rootfs import parse_mount_options
from labkit import sys as lsys


def volume_path(name):
    return f"/var/lib/labkit/volumes/{name}/_data"


def invalid(fn, text, *words):
    with pytest.raises(Invalid) as info:
        fn(text)
    for w in words:
        assert w in str(info.value), str(info.value)
    assert info.value.hint, "every refusal says what to type instead"
    return info.value


# --- -v ------------------------------------------------------------------------------------------
def test_v_bind_is_realpathed_with_rprivate_default(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    m = parse_volume(f"{tmp_path}/link/:/data/")
    assert m == Mount("bind", "/data", str(real), False, ("rprivate",))


def test_v_bind_creates_a_missing_host_dir_like_docker(tmp_path):
    m = parse_volume(f"{tmp_path}/new/deep:/data:ro")
    assert os.path.isdir(tmp_path / "new" / "deep")
    assert oct(os.stat(tmp_path / "new" / "deep").st_mode & 0o777) == oct(0o755 & ~_umask())
    assert m == Mount("bind", "/data", str(tmp_path / "new" / "deep"), True, ("rprivate",))


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_v_bind_missing_can_be_refused(tmp_path):
    invalid(lambda t: parse_volume(t, create_missing=False), f"{tmp_path}/nope:/d", "bind source path does not exist")


def test_v_relative_dot_source_is_a_bind_from_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    assert parse_volume("./src:/x").source == str(tmp_path / "src")


@pytest.mark.parametrize("mode,ro,prop", [("ro", True, "rprivate"), ("rw", False, "rprivate"),
                                          ("ro,rshared", True, "rshared"), ("rslave", False, "rslave"),
                                          ("cached", False, "rprivate"), ("private,delegated,rw", False, "private")])
def test_v_bind_modes(tmp_path, mode, ro, prop):
    m = parse_volume(f"{tmp_path}:/d:{mode}")
    assert (m.read_only, m.options) == (ro, (prop,))


def test_v_named_and_anonymous_volumes():
    assert parse_volume("data:/var/lib/db") == Mount("volume", "/var/lib/db", "data")
    assert parse_volume("my.vol_1-x:/d:ro,nocopy") == Mount("volume", "/d", "my.vol_1-x", True, ("nocopy",))
    assert parse_volume("/anon") == Mount("volume", "/anon", "")
    assert parse_volume("//anon/./x/") == Mount("volume", "/anon/x", "")


@pytest.mark.parametrize("text,words", [
    ("", ["invalid volume specification: ''"]),
    (":/d", ["invalid volume specification"]),
    ("/a:/b:ro:x", ["invalid volume specification"]),
    ("/ctr:ro", ["invalid volume specification: '/ctr:ro'"]),
    ("data:rel", ["must be absolute"]),
    ("rel", ["must be absolute"]),
    ("data:/", ["destination can't be '/'"]),
    ("data:/d:rx", ["invalid mode: rx"]),
    ("data:/d:ro,rw", ["invalid mode: ro,rw"]),
    ("data:/d:rshared", ["bind mounts only"]),
    ("data:/d:z", ["SELinux", "'z'"]),
    ("/tmp:/d:Z", ["SELinux", "'Z'"]),
    ("/tmp:/d:nocopy", ["nocopy applies to volumes only"]),
    ("a:/d", ["too short"]),
    ("a b:/d", ['"a b" includes invalid characters', "use absolute path"]),
    ("sub/dir:/d", ["invalid characters"]),
    ("-x:/d", ["invalid characters"]),
])
def test_v_errors(text, words):
    invalid(parse_volume, text, *words)


# --- --mount ---------------------------------------------------------------------------------------
def test_mount_bind(tmp_path):
    m = parse_mount(f"type=bind,source={tmp_path},target=/app,readonly,bind-propagation=rslave")
    assert m == Mount("bind", "/app", str(tmp_path), True, ("rslave",))
    m = parse_mount(f'"type=bind","src={tmp_path}","dst=/app","ro=false"')  # CSV quoting, aliases
    assert m == Mount("bind", "/app", str(tmp_path), False, ("rprivate",))
    m = parse_mount(f"type=bind,src={tmp_path},destination=/a,bind-recursive=disabled")
    assert m.options == ("rprivate", "nonrecursive")


def test_mount_bind_missing_source_is_an_error_unless_create_src(tmp_path):
    invalid(parse_mount, f"type=bind,src={tmp_path}/gone,dst=/a",
            f"bind source path does not exist: {tmp_path}/gone")
    assert not os.path.exists(tmp_path / "gone")
    m = parse_mount(f"type=bind,src={tmp_path}/gone,dst=/a,bind-create-src")
    assert os.path.isdir(tmp_path / "gone") and m.source == str(tmp_path / "gone")


def test_mount_volume_default_type_and_nocopy():
    assert parse_mount("source=db,target=/var/lib/db") == Mount("volume", "/var/lib/db", "db")
    assert parse_mount("type=volume,dst=/x,volume-nocopy") == Mount("volume", "/x", "", False, ("nocopy",))
    assert parse_mount("type=volume,dst=/x,volume-nocopy=false,volume-driver=local").options == ()
    assert parse_mount("TYPE=Volume,src=v1,dst=/x,ro=1").read_only


def test_mount_tmpfs():
    m = parse_mount("type=tmpfs,dst=/run,tmpfs-size=64m,tmpfs-mode=1770")
    assert m == Mount("tmpfs", "/run", "", False, ("size=67108864", "mode=1770"))
    assert parse_mount("type=tmpfs,dst=/run,tmpfs-size=1.5g,readonly").options == (f"size={3 << 29}",)


@pytest.mark.parametrize("text,words", [
    ("", ["value is empty"]),
    ("type=bind,src=/tmp,dst=/a,foo=1", ["unknown option 'foo'"]),
    ("type=bind,src=/tmp,dst=/a,bogus", ["invalid field 'bogus' must be a key=value pair"]),
    ("type=bind,src=/tmp,dst=/a,ro=yes", ["invalid boolean value"]),
    ("type=bind,src=/tmp,dst=", ["invalid value for 'dst': value is empty"]),
    ("type=bind, src=/tmp,dst=/a", ["should not have whitespace"]),
    ("type=bind,src=/tmp", ["Target must not be empty"]),
    ("type=bind,dst=/a", ["Source must not be empty"]),
    ("type=bind,src=/tmp,dst=rel", ["must be absolute"]),
    ("type=bind,src=/tmp,dst=/", ["can't be '/'"]),
    ("type=bind,src=/tmp,dst=/a,bind-propagation=sideways", ["invalid propagation mode: sideways"]),
    ("type=bind,src=/tmp,dst=/a,bind-recursive=readonly,ro", ["bind-recursive=readonly is not supported"]),
    ("type=bind,src=/tmp,dst=/a,bind-recursive=maybe", ["invalid value for bind-recursive"]),
    ("type=bind,src=/tmp,dst=/a,bind-nonrecursive", ["deprecated"]),
    ("type=volume,dst=/a,bind-propagation=rshared", ["cannot mix 'bind-*' options with mount type 'volume'"]),
    ("type=bind,src=/tmp,dst=/a,volume-nocopy", ["cannot mix 'volume-*' options with mount type 'bind'"]),
    ("type=volume,dst=/a,tmpfs-size=1m", ["cannot mix 'tmpfs-*'"]),
    ("type=volume,src=/abs,dst=/a", ["invalid characters"]),
    ("type=volume,src=v1,dst=/a,volume-driver=nfs", ["volume driver 'nfs' is not supported"]),
    ("type=volume,src=v1,dst=/a,volume-label=a=b", ["'volume-label' is not supported"]),
    ("type=volume,src=v1,dst=/a,volume-subpath=x", ["'volume-subpath' is not supported"]),
    ("type=tmpfs,src=x,dst=/a", ["Source must not be specified"]),
    ("type=tmpfs,dst=/a,tmpfs-size=lots", ["invalid value for tmpfs-size: lots"]),
    ("type=tmpfs,dst=/a,tmpfs-mode=999", ["invalid value for tmpfs-mode: 999"]),
    ("type=image,src=busybox,dst=/a", ["mount type 'image' is not supported"]),
    ("type=weird,dst=/a", ["mount type unknown"]),
    ("type=bind,src=/tmp,dst=/a,consistency=strong", ["invalid consistency"]),
    ('type=bind,"src=/tmp', ["cannot parse --mount value"]),
])
def test_mount_errors(text, words):
    invalid(parse_mount, text, *words)


# --- --tmpfs ---------------------------------------------------------------------------------------
def test_tmpfs_options_are_canonical_and_last_wins():
    assert parse_tmpfs("/run") == Mount("tmpfs", "/run")
    m = parse_tmpfs("/run:size=64m,mode=1777,exec,uid=1000,size=128k")
    assert m == Mount("tmpfs", "/run", "", False, ("mode=1777", "exec", "uid=1000", "size=131072"))
    assert parse_tmpfs("/x:rw,ro,nr_inodes=1k,size=50%") == Mount("tmpfs", "/x", "", True, ("nr_inodes=1k", "size=50%"))
    assert parse_tmpfs("/x:defaults,mpol=interleave:0-1,gid=5").options == ("mpol=interleave:0-1", "gid=5")


@pytest.mark.parametrize("text,words", [
    ("run:size=1m", ["must be absolute"]),
    ("/:size=1m", ["can't be '/'"]),
    ("/run:size=huge", ['invalid tmpfs option "size=huge"']),
    ("/run:mode=9", ['invalid tmpfs option "mode=9"']),
    ("/run:uid=root", ['invalid tmpfs option "uid=root"']),
    ("/run:huge=always", ['invalid tmpfs option "huge=always"']),
    ("/run:colour", ['invalid tmpfs option "colour"']),
    ("/run:sync", ['"sync" is not supported by labkit']),
    ("/run:nodiratime", ['"nodiratime" is not supported']),
])
def test_tmpfs_errors(text, words):
    invalid(parse_tmpfs, text, *words)


# --- across mounts -----------------------------------------------------------------------------------
def test_duplicate_targets_are_refused():
    mounts.check_unique_targets([Mount("tmpfs", "/a"), Mount("volume", "/b", "v")])
    invalid(mounts.check_unique_targets, [Mount("tmpfs", "/a"), Mount("volume", "/a/", "v")],
            "Duplicate mount point: /a")


def test_root_propagation_follows_moby():
    b = lambda p: Mount("bind", "/x", "/tmp", False, (p,))  # noqa: E731
    assert mounts.root_propagation([b("rprivate"), Mount("volume", "/v", "v")]) is None
    assert mounts.root_propagation([b("rslave")]) == "rslave"
    assert mounts.root_propagation([b("slave"), b("rshared")]) == "shared"


# --- OCI mounts ----------------------------------------------------------------------------------------
def test_oci_bind_volume_tmpfs():
    out = oci_mounts([Mount("bind", "/host", "/srv", True, ("rshared",)),
                      Mount("volume", "/data", "db", False, ("nocopy",)),
                      Mount("tmpfs", "/run", "", False, ("size=67108864", "mode=1777")),
                      Mount("bind", "/b", "/srv", False, ("rprivate", "nonrecursive"))], volume_path)
    d = [m.to_dict() for m in out]
    assert d == [
        {"destination": "/host", "type": "bind", "source": "/srv", "options": ["rbind", "rshared", "ro"]},
        {"destination": "/data", "type": "bind", "source": volume_path("db"), "options": ["rbind", "rprivate"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["noexec", "nosuid", "nodev", "rprivate", "size=67108864", "mode=1777"]},
        {"destination": "/b", "type": "bind", "source": "/srv", "options": ["bind", "rprivate"]},
    ]


def test_oci_tmpfs_user_flags_override_docker_defaults_and_ro():
    (m,) = oci_mounts([parse_tmpfs("/run:exec,ro,size=1m")], volume_path)
    assert m.options == ["nosuid", "nodev", "rprivate", "exec", "size=1048576", "ro"]


def test_oci_mounts_put_parents_first():
    out = oci_mounts([Mount("volume", "/a/b/c", "v1"), Mount("tmpfs", "/a"), Mount("volume", "/z/y", "v2"),
                      Mount("volume", "/a/b", "v3")], volume_path)
    assert [m.destination for m in out] == ["/a", "/z/y", "/a/b", "/a/b/c"]


def test_oci_anonymous_volume_needs_a_name_first():
    invalid(lambda ms: oci_mounts(ms, volume_path), [Mount("volume", "/d", "")], "has no name yet")


def test_every_emitted_option_is_one_the_runtime_applies():
    """What labkit.rootfs.parse_mount_options does not know goes to the fs as data: for a bind that
    is dropped, for tmpfs the kernel parses it. So bind options must all be flags or propagation."""
    out = oci_mounts([Mount("bind", "/a", "/srv", True, ("rslave",)), Mount("volume", "/v", "v", True),
                      Mount("bind", "/b", "/srv", False, ("private", "nonrecursive"))], volume_path)
    for m in out:
        opts = parse_mount_options(m.options)
        assert opts.data == "" and opts.flags & lsys.MS_BIND
    (t,) = oci_mounts([parse_tmpfs("/run:size=64m,mode=1777,uid=1,gid=2,nr_inodes=1k,exec")], volume_path)
    opts = parse_mount_options(t.options)
    assert opts.flags == lsys.MS_NOSUID | lsys.MS_NODEV and opts.propagation == lsys.MS_PRIVATE | lsys.MS_REC
    assert opts.data == "size=67108864,mode=1777,uid=1,gid=2,nr_inodes=1k"
