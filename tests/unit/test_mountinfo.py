from labkit import mountinfo

SAMPLE = """\
64 42 254:0 /tmp/labkit-x/rootfs / ro,relatime - ext4 /dev/vda rw,discard
65 64 0:40 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
71 64 0:45 / /tmp rw,nosuid,nodev,relatime shared:7 - tmpfs tmpfs rw,mode=1777
72 64 0:46 / /with\\040space rw - tmpfs my\\134src rw
73 64 0:47 / /tmp rw - tmpfs tmpfs rw,mode=755
"""


def test_parse_fields_and_escapes():
    mounts = mountinfo.parse(SAMPLE)
    root = mounts[0]
    assert (root.mount_id, root.parent_id, root.dev, root.root, root.point) == (64, 42, "254:0", "/tmp/labkit-x/rootfs", "/")
    assert root.readonly and root.fstype == "ext4" and root.source == "/dev/vda"
    tmp = mounts[2]
    assert not tmp.readonly and tmp.fstype == "tmpfs" and tmp.option("mode") == "1777"
    assert tmp.options == ("rw", "nosuid", "nodev", "relatime")  # optional fields are not options
    assert mounts[3].point == "/with space" and mounts[3].source == "my\\src"


def test_at_returns_the_topmost_mount():
    mounts = mountinfo.parse(SAMPLE)
    assert mountinfo.at(mounts, "/tmp").option("mode") == "755"
    assert mountinfo.at(mounts, "/nowhere") is None
