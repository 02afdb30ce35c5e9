import pytest

from labkit.engine import errors as E
from labkit.engine.status import (Event, Status, can_exec, can_pause, can_remove, can_restart,
                                  can_start, can_stop, can_unpause, inspect_state, transition)
from labkit.errors import LabkitError
from labkit.engine.records import ContainerState

S = Status


@pytest.mark.parametrize("cls, code", [(E.NotFound, 404), (E.Conflict, 409), (E.Invalid, 400),
                                       (E.NotModified, 304)])
def test_error_kinds_map_to_http(cls, code):
    err = cls("boom", "do this")
    assert isinstance(err, LabkitError)
    assert cls.http_status == code == E.http_status(err)
    assert "hint: do this" in str(err)


def test_unknown_errors_are_500():
    assert E.http_status(ValueError("x")) == 500


@pytest.mark.parametrize("cur, ev, new", [
    (S.CREATED, Event.START, S.RUNNING),
    (S.EXITED, Event.START, S.RUNNING),
    (S.RESTARTING, Event.START, S.RUNNING),
    (S.RUNNING, Event.EXIT, S.EXITED),
    (S.PAUSED, Event.EXIT, S.EXITED),
    (S.RUNNING, Event.STOP, S.EXITED),
    (S.RESTARTING, Event.STOP, S.EXITED),
    (S.RUNNING, Event.AUTO_RESTART, S.RESTARTING),
    (S.RUNNING, Event.PAUSE, S.PAUSED),
    (S.PAUSED, Event.UNPAUSE, S.RUNNING),
    (S.EXITED, Event.RESTART, S.RUNNING),
    (S.EXITED, Event.REMOVE, S.REMOVING),
    (S.CREATED, Event.REMOVE, S.REMOVING),
    (S.DEAD, Event.REMOVE, S.REMOVING),
    (S.RUNNING, Event.FORCE_REMOVE, S.REMOVING),
    (S.REMOVING, Event.REMOVE_FAILED, S.DEAD),
])
def test_allowed_transitions(cur, ev, new):
    assert transition(cur, ev, "web") == new


@pytest.mark.parametrize("cur, ev, kind, words", [
    (S.EXITED, Event.PAUSE, E.Conflict, "Container web is not running"),
    (S.PAUSED, Event.PAUSE, E.Conflict, "Container web is already paused"),
    (S.RESTARTING, Event.PAUSE, E.Conflict, "is restarting, wait until the container is running"),
    (S.RUNNING, Event.UNPAUSE, E.Conflict, "Container web is not paused"),
    (S.PAUSED, Event.START, E.Conflict, "cannot start a paused container, try unpause instead"),
    (S.RUNNING, Event.START, E.NotModified, "container is already running"),
    (S.REMOVING, Event.START, E.Conflict, "marked for removal"),
    (S.EXITED, Event.STOP, E.NotModified, "container is already stopped"),
    (S.RUNNING, Event.REMOVE, E.Conflict,
     "cannot remove a running container web: stop the container before attempting removal or force remove"),
    (S.PAUSED, Event.REMOVE, E.Conflict, "unpause and then stop the container"),
    (S.REMOVING, Event.FORCE_REMOVE, E.Conflict, "already in progress"),
    (S.CREATED, Event.EXIT, E.Conflict, "is not running"),
])
def test_refused_transitions_use_docker_words(cur, ev, kind, words):
    with pytest.raises(kind, match=words):
        transition(cur, ev, "web")


def test_predicates_agree_with_transition_table():
    for s in Status:
        for pred, ev in [(can_pause, Event.PAUSE), (can_unpause, Event.UNPAUSE),
                         (can_start, Event.START), (can_restart, Event.RESTART),
                         (lambda x: can_remove(x, False), Event.REMOVE),
                         (lambda x: can_remove(x, True), Event.FORCE_REMOVE),
                         (can_stop, Event.STOP)]:
            try:
                transition(s, ev)
                ok = True
            except E.EngineError:
                ok = False
            assert pred(s) == ok, (s, ev)


def test_exec_only_when_running():
    assert [s for s in Status if can_exec(s)] == [S.RUNNING]


def test_inspect_state_fields():
    st = ContainerState(name="web", status=S.PAUSED, pid=42, exit_code=0,
                        started_at=1_700_000_000_123_456_789)
    d = inspect_state(st)
    assert list(d) == ["Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead",
                       "Pid", "ExitCode", "Error", "StartedAt", "FinishedAt"]
    assert d["Status"] == "paused" and d["Running"] and d["Paused"] and not d["Restarting"]
    assert d["Pid"] == 42
    assert d["StartedAt"] == "2023-11-14T22:13:20.123456789Z"
    assert d["FinishedAt"] == "0001-01-01T00:00:00Z"


def test_inspect_state_exited_has_no_pid():
    st = ContainerState(name="x", status=S.EXITED, pid=42, exit_code=137, oom_killed=True)
    d = inspect_state(st)
    assert d["Pid"] == 0 and d["ExitCode"] == 137 and d["OOMKilled"] and not d["Running"]
