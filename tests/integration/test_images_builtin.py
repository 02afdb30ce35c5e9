"""`busybox` without a network: built from the host's busybox-static on first use, once.

Every test gets an empty store of its own (a fresh data root); the CLI ones run
`labkit` as a subprocess with LABKIT_DATA_ROOT pointing there.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from labkit import rootfs
from labkit.errors import LabkitError
from labkit.images import base, build, builtin
from labkit.images.store import Store

# Host only: building and naming images does not depend on the cgroup version.

ALIASES = ["busybox", "busybox:latest", "library/busybox", "docker.io/library/busybox",
           "docker.io/library/busybox:latest"]
NOTICE = "busybox: not in the store; built it from the host's busybox-static ("


@pytest.fixture
def work(lab_tmp):
    """A directory of this test's, removed afterwards (pytest's tmp_path would outlive the run)."""
    path = tempfile.mkdtemp(prefix="labkit-builtin-", dir=lab_tmp)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_root(work):
    from labkit.engine.containers import Engine

    path = work / "data"
    path.mkdir()
    yield str(path)
    Engine(str(path)).clear()  # its containers, and the default bridge their runs made


@pytest.fixture
def store(data_root):
    return Store(os.path.join(data_root, "images"))


@pytest.fixture(scope="module")
def reference_digest(lab_tmp):
    """The digest busybox_image gives on this host: what the offline image must be."""
    path = tempfile.mkdtemp(prefix="labkit-builtin-reference-", dir=lab_tmp)
    try:
        return base.busybox_image(Store(os.path.join(path, "images"))).digest
    finally:
        shutil.rmtree(path, ignore_errors=True)


def lk(*args: str, data_root: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABKIT_DATA_ROOT": data_root}
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("ref", ALIASES)
def test_each_spelling_builds_the_reproducible_image_once_tagged_busybox(store, ref, reference_digest):
    said: list[str] = []
    image = builtin.open_image_or_builtin(store, ref, notify=said.append)
    assert store.tags() == {"busybox": reference_digest} and image.digest == reference_digest
    assert image.ref == "busybox" and image.config.config.cmd == ["sh"]
    binary = rootfs.find_busybox()
    assert said == [f"{NOTICE}{binary}, sha256 {builtin._file_sha256(binary)[:12]})"]
    for again in ALIASES:  # every other spelling now finds it: nothing is built twice
        assert builtin.open_image_or_builtin(store, again, notify=said.append).digest == reference_digest
    assert len(said) == 1 and builtin.ensure(store, ref) is False


def test_the_notice_goes_to_stderr_by_default(store, capsys):
    assert builtin.ensure(store, "busybox") is True
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(NOTICE) and captured.err.count("\n") == 1


@pytest.mark.parametrize("ref", ["busybox:1.36", "alpine", "127.0.0.1:5000/library/busybox", "quay.io/busybox",
                                 "busybox@sha256:" + "0" * 64, "sha256:" + "0" * 64])
def test_other_names_are_not_built(store, ref):
    assert builtin.ensure(store, ref) is False
    with pytest.raises(LabkitError):
        builtin.open_image_or_builtin(store, ref)
    assert store.tags() == {}


def test_an_image_the_store_has_under_a_docker_spelling_wins(store, reference_digest):
    """A busybox pulled earlier (tagged by its full reference) is used, not rebuilt."""
    pulled = base.busybox_image(store, "docker.io/library/busybox:latest", created="2024-01-01T00:00:00Z")
    assert pulled.digest != reference_digest
    for ref in ALIASES:
        assert builtin.open_image_or_builtin(store, ref, notify=None).digest == pulled.digest
    assert list(store.tags()) == ["docker.io/library/busybox:latest"]


def test_spellings_follow_docker_for_any_name(store):
    app = base.busybox_image(store, "app", created="2024-01-01T00:00:00Z")
    assert builtin.open_image_or_builtin(store, "app:latest").digest == app.digest
    assert builtin.local_ref(store, "docker.io/library/app") == "app"
    assert builtin.local_ref(store, "app:2") == "app:2"  # another tag is another image
    assert builtin.open_image_or_builtin(store, app.digest).digest == app.digest


def test_another_platform_is_not_faked_from_the_host_binary(store):
    other = "linux/s390x" if os.uname().machine != "s390x" else "linux/amd64"
    with pytest.raises(LabkitError, match="no image tagged"):
        builtin.open_image_or_builtin(store, "busybox", platform=other)
    assert store.tags() == {}
    host = builtin.open_image_or_builtin(store, "busybox", platform=f"linux/{os.uname().machine}", notify=None)
    assert list(store.tags()) == ["busybox"] and host.ref == "busybox"


_RACER = """
import sys
from labkit.images import builtin
from labkit.images.store import Store
store = Store(sys.argv[1])
made = builtin.ensure(store, sys.argv[2], notify=None)
print(int(made), builtin.open_image_or_builtin(store, sys.argv[2], notify=None).digest)
"""


def test_first_uses_at_once_build_it_once_and_leave_a_sound_store(store, reference_digest):
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, store.root, ALIASES[i % len(ALIASES)]],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    results = [r.communicate(timeout=120) for r in racers]
    assert all(r.returncode == 0 for r in racers), [err for _, err in results]
    lines = [out.split() for out, _ in results]
    assert sorted(made for made, _ in lines) == ["0"] * 5 + ["1"]
    assert {digest for _, digest in lines} == {reference_digest}
    with open(os.path.join(store.root, "index.json")) as f:
        assert [m["digest"] for m in json.load(f)["manifests"]] == [reference_digest]
    assert all(store.verify(d) for d in store.blobs())
    assert not [n for n in os.listdir(os.path.join(store.root, "blobs")) if n.startswith(".incoming-")]


def test_build_from_busybox_on_an_empty_store(store, work, reference_digest):
    context = work / "ctx"
    context.mkdir()
    (context / "hello.txt").write_text("hi\n")
    (context / "Containerfile").write_text('FROM docker.io/library/busybox\nCOPY hello.txt /\nCMD ["cat", "/hello.txt"]\n')
    result = build.build(str(context), store, tag="hello")
    assert store.tags()["busybox"] == reference_digest and "hello" in store.tags()
    assert result.image.layers[0].digest == store.get_json(reference_digest)["layers"][0]["digest"]


def test_cli_build_from_busybox_says_it_built_it_once(data_root, work, reference_digest):
    context = work / "ctx"
    context.mkdir()
    (context / "Containerfile").write_text('FROM busybox\nCMD ["echo", "hi"]\n')
    first = lk("build", str(context), "-t", "hi", data_root=data_root)
    assert first.returncode == 0, first.stderr
    assert [line for line in first.stderr.splitlines() if line.startswith(NOTICE)] == \
        [line for line in first.stderr.splitlines() if line.startswith("busybox:")] != []
    again = lk("build", str(context), "-t", "hi2", data_root=data_root)
    assert again.returncode == 0 and "busybox:" not in again.stderr
    listed = lk("images", data_root=data_root).stdout.splitlines()
    names = {line.split()[0]: line.split()[1] for line in listed[1:]}
    assert set(names) == {"busybox", "hi", "hi2"} and reference_digest.startswith(names["busybox"])


def test_cli_run_busybox_on_an_empty_store(data_root):
    r = lk("run", "--rm", "busybox", "echo", "hi", data_root=data_root)
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    assert r.stderr.startswith(NOTICE)
    assert "busybox" in lk("images", data_root=data_root).stdout
    again = lk("run", "--rm", "busybox:latest", "echo", "again", data_root=data_root)
    assert (again.returncode, again.stdout, again.stderr) == (0, "again\n", "")
