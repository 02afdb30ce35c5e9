"""Chapter 02's exercise check: each wrong answer gets its own hint; the reference passes."""
import pytest

from labkit import rootfs, runtime
from labkit.check import ch02
from labkit.runtime.spec import Mount

pytestmark = pytest.mark.vm


def reference(spec):
    spec.root.readonly = True
    spec.mounts.append(Mount("/tmp", "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=1777"]))
    return spec


def readonly(spec):
    spec.root.readonly = True


def with_tmp(options, type_="tmpfs", source="tmpfs", destination="/tmp"):
    def edit(spec):
        readonly(spec)
        spec.mounts.append(Mount(destination, type_, source, options))
    return edit


def raises(spec):
    raise ValueError("oops")


@pytest.fixture(autouse=True)
def no_containers_left():
    yield
    assert runtime.list_containers() == []


def test_reference_solution_passes(busybox_rootfs):
    verdict = ch02.readonly_root_with_tmp(reference, busybox_rootfs)
    assert verdict, repr(verdict)
    assert "EROFS" in verdict.message


def test_reference_solution_passes_with_its_own_rootfs():
    assert ch02.readonly_root_with_tmp(reference)


@pytest.mark.parametrize("edit, message, hint", [
    (lambda spec: None, "/ is mounted read-write", "spec.root.readonly = True"),
    (readonly, "nothing is mounted on /tmp", "append a tmpfs mount"),
    (with_tmp(["ro"]), "mounted read-only", "drop 'ro'"),
    (with_tmp(["mode=755"]), "mode 0755", "mode=1777"),
    (with_tmp(["mode=1777"], destination="tmp"), "must be absolute", "must be absolute"),
    (raises, "raised ValueError: oops", "labkit.runtime.Spec"),
    (lambda spec: {"root": {"readonly": True}}, "returned a dict", "return spec"),
])
def test_each_wrong_answer_gets_its_hint(busybox_rootfs, edit, message, hint):
    verdict = ch02.readonly_root_with_tmp(edit, busybox_rootfs)
    assert not verdict
    assert message in verdict.message and hint in verdict.hint, repr(verdict)


def test_a_bind_mount_is_not_a_tmpfs(busybox_rootfs, tmp_path):
    host_dir = tmp_path / "host-tmp"
    host_dir.mkdir()
    verdict = ch02.readonly_root_with_tmp(with_tmp(["bind"], "bind", str(host_dir)), busybox_rootfs)
    assert not verdict and "not a tmpfs of its own" in verdict.message and "type='tmpfs'" in verdict.hint


def test_the_check_leaves_the_rootfs_unchanged(busybox_rootfs):
    before = rootfs.tree_digest(busybox_rootfs)
    for edit in (lambda spec: None, readonly, reference):
        ch02.readonly_root_with_tmp(edit, busybox_rootfs)
    assert rootfs.tree_digest(busybox_rootfs) == before
