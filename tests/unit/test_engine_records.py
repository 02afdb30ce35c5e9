import json
import multiprocessing
import os

import pytest

from labkit.engine import records
from labkit.engine.errors import Conflict, Invalid, NotFound
from labkit.engine.records import ContainerConfig, Mount, Resources, Store
from labkit.engine.restart import RestartPolicy
from labkit.engine.status import Status, transition, Event


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "containers"))


def full_config():
    return ContainerConfig(
        image="busybox:latest", command=["sh", "-c", "echo hi"], entrypoint=["/init"],
        env=["A=1"], working_dir="/w", user="1000:1000", hostname="h",
        labels={"lab": "1"}, mounts=[Mount("bind", "/data", "/srv", True, ("rbind",))],
        restart_policy=RestartPolicy("on-failure", 3), stop_signal="SIGINT", stop_timeout=5,
        init=True, tty=True, open_stdin=True,
        resources=Resources(memory=64 << 20, nano_cpus=500_000_000, pids_limit=100),
        log_opts={"max-size": "1m"})


def test_default_root_follows_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_DATA_ROOT", str(tmp_path))
    assert Store().root == os.path.join(str(tmp_path), "containers")


def test_config_is_immutable_and_round_trips():
    cfg = full_config()
    with pytest.raises(Exception):
        cfg.image = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.labels["new"] = "x"  # type: ignore[index]
    back = ContainerConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert back == cfg


def test_config_needs_image():
    with pytest.raises(Invalid):
        ContainerConfig(image="")


def test_create_writes_both_files(store):
    rec = store.create(full_config(), name="web")
    d = store.path(rec.id)
    assert sorted(os.listdir(d)) == ["config.json", "state.json"]
    state = json.load(open(os.path.join(d, "state.json")))
    assert state["name"] == "web" and state["status"] == "created"
    assert state["started_at"] == "0001-01-01T00:00:00Z"
    assert state["created_at"].endswith("Z")
    assert store.get("web").config == full_config()
    assert store.get(rec.id[:5]).id == rec.id
    assert not [e for e in os.listdir(store.root) if e.startswith(".tmp") or e.startswith(".new")]


def test_random_name_when_none_given(store):
    rec = store.create(ContainerConfig(image="busybox"))
    assert "_" in rec.name and store.get(rec.name).id == rec.id


def test_duplicate_name_conflicts(store):
    first = store.create(ContainerConfig(image="busybox"), name="web")
    with pytest.raises(Conflict, match=f'"/web" is already in use by container "{first.id}"'):
        store.create(ContainerConfig(image="busybox"), name="/web")


def test_bad_name_is_invalid(store):
    with pytest.raises(Invalid):
        store.create(ContainerConfig(image="busybox"), name="-x")


def test_edit_saves_state_and_keeps_ns(store):
    rec = store.create(ContainerConfig(image="busybox"), name="web")
    with store.edit("web") as r:
        r.state.status = transition(r.state.status, Event.START, r.name)
        r.state.pid, r.state.started_at = 1234, 1_700_000_000_123_456_789
    got = store.get("web").state
    assert got.status == Status.RUNNING and got.pid == 1234
    assert got.started_at == 1_700_000_000_123_456_789
    assert got.created_at == rec.state.created_at


def test_edit_discards_on_error(store):
    store.create(ContainerConfig(image="busybox"), name="web")
    with pytest.raises(Conflict):
        with store.edit("web") as r:
            r.state.pid = 99
            r.state.status = transition(r.state.status, Event.PAUSE, r.name)
    assert store.get("web").state.pid == 0


def test_rename(store):
    a = store.create(ContainerConfig(image="busybox"), name="a1")
    store.create(ContainerConfig(image="busybox"), name="b1")
    with pytest.raises(Conflict):
        store.rename("a1", "b1")
    store.rename("a1", "c1")
    assert store.get("c1").id == a.id
    with pytest.raises(NotFound):
        store.get("a1")
    store.create(ContainerConfig(image="busybox"), name="a1")  # the old name is free again


def test_remove_and_list(store):
    a = store.create(ContainerConfig(image="busybox"), name="a1")
    b = store.create(ContainerConfig(image="busybox"), name="b1")
    assert [r.id for r in store.list()] == [b.id, a.id]  # newest first
    assert store.remove("a1") == a.id
    assert [r.id for r in store.list()] == [b.id]
    with pytest.raises(NotFound, match="No such container: a1"):
        store.get("a1")
    with pytest.raises(NotFound):
        with store.edit(a.id):
            pass


def test_cleanup_removes_half_made_records(store):
    store.create(ContainerConfig(image="busybox"), name="ok")
    os.makedirs(os.path.join(store.root, ".new-abc"))
    os.makedirs(os.path.join(store.root, ".removing-" + "f" * 64))
    assert sorted(store.cleanup()) == [".new-abc", ".removing-" + "f" * 64]
    assert [r.name for r in store.list()] == ["ok"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = str(tmp_path / "x.json")
    records.write_json_atomic(p, {"a": 1})
    with pytest.raises(TypeError):
        records.write_json_atomic(p, {"a": object()})
    assert json.load(open(p)) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def _race(root, barrier, results):
    barrier.wait()
    try:
        rec = Store(root).create(ContainerConfig(image="busybox"), name="contested")
        results.put(("won", rec.id))
    except Conflict:
        results.put(("lost", ""))


def test_two_processes_race_for_one_name(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        root = str(tmp_path / f"r{round_}")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(root, barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        outcome = sorted(results.get(timeout=30)[0] for _ in procs)
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        assert outcome == ["lost", "won"]
        assert [r.name for r in Store(root).list()] == ["contested"]
