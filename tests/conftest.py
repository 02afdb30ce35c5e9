"""Fixtures: a busybox rootfs, bundles, and a private run root per test session."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from labkit import rootfs
from labkit.runtime import default_spec

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a real kernel")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.fspath) and os.geteuid() != 0:
            item.add_marker(requires_root)


@pytest.fixture(scope="session")
def lab_tmp():
    """A temp dir whose name starts with labkit, so a leak inside is found."""
    path = tempfile.mkdtemp(prefix="labkit-test-")
    os.chmod(path, 0o755)  # user-namespace tests map root to an unprivileged host uid
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def run_root(lab_tmp):
    """Containers of this session keep their state in a private run root."""
    old = os.environ.get("LABKIT_RUN_ROOT")
    os.environ["LABKIT_RUN_ROOT"] = os.path.join(lab_tmp, "run")
    yield os.environ["LABKIT_RUN_ROOT"]
    if old is None:
        os.environ.pop("LABKIT_RUN_ROOT")
    else:
        os.environ["LABKIT_RUN_ROOT"] = old


@pytest.fixture(scope="module")
def engine_data_root(lab_tmp, request):
    """An engine data root of the test module's own, with the offline busybox image built in it
    once (the engine's tests, the engine chapters' checks and the image archive tests use it)."""
    from labkit.images import builtin
    from labkit.images.store import Store

    path = os.path.join(lab_tmp, "data-" + request.module.__name__.rpartition(".")[2])
    os.makedirs(path, exist_ok=True)
    builtin.ensure(Store(os.path.join(path, "images")), "busybox", notify=None)
    return path


@pytest.fixture(scope="session")
def busybox_rootfs(lab_tmp):
    return rootfs.build_busybox_rootfs(os.path.join(lab_tmp, "busybox-rootfs"))


@pytest.fixture
def make_bundle(tmp_path, busybox_rootfs):
    """make_bundle(args, **spec_fields) -> a bundle dir whose rootfs is the shared busybox tree."""
    counter = iter(range(1000))

    def make(args, hostname="labkit", edit=None):
        bundle = tmp_path / f"bundle{next(counter)}"
        bundle.mkdir()
        spec = default_spec(args, rootfs=busybox_rootfs, hostname=hostname)
        if edit:
            edit(spec)
        spec.save(str(bundle))
        return str(bundle)

    return make
