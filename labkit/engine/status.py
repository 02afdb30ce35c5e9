"""One container status model: every allowed transition is in this file.

Like youki's container/state.rs: the engine asks `can_*` before acting and
calls `transition` once the action happened, so no other module decides what
a status may become. Refusals carry Docker's wording and error kind.

    created ──start──> running ──exit/stop──> exited ──start──> running
                        │  ^  \\                 ^
                 pause  │  │   auto_restart      │ stop (cancels the restart)
                        v  │unpause  \\          │
                       paused      restarting ───┘   (start → running)
    any (not running, or force) ──remove──> removing ──remove_failed──> dead
"""
from __future__ import annotations

import enum
from typing import Protocol

from labkit.engine.errors import Conflict, NotModified
from labkit.engine.timefmt import rfc3339_nano


class Status(str, enum.Enum):
    """The words `docker ps`/`docker inspect` use for State.Status."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    EXITED = "exited"
    REMOVING = "removing"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


class Event(str, enum.Enum):
    """What happened to a container; `transition` says where that leads."""

    START = "start"                  # process started (user start, or a policy restart)
    STOP = "stop"                    # a user stop completed (or cancelled a pending restart)
    EXIT = "exit"                    # the process exited on its own (or was killed)
    AUTO_RESTART = "auto_restart"    # it exited and the restart policy will start it again
    PAUSE = "pause"
    UNPAUSE = "unpause"
    RESTART = "restart"              # `docker restart` completed
    REMOVE = "remove"                # removal began
    FORCE_REMOVE = "force_remove"    # removal of a live container began (it gets killed)
    REMOVE_FAILED = "remove_failed"  # removal failed half way: the container is dead

    def __str__(self) -> str:
        return self.value


S = Status
# Docker counts paused and restarting containers as Running (State.Running is true).
_LIVE = frozenset({S.RUNNING, S.PAUSED, S.RESTARTING})
_GONE = frozenset({S.REMOVING, S.DEAD})


def can_start(s: Status) -> bool:
    return s in (S.CREATED, S.EXITED, S.RESTARTING)


def can_stop(s: Status) -> bool:
    """Stopping a created/exited container is not an error but a no-op (304)."""
    return s in _LIVE


def can_kill(s: Status) -> bool:
    return s in (S.RUNNING, S.PAUSED)


def can_pause(s: Status) -> bool:
    return s == S.RUNNING


def can_unpause(s: Status) -> bool:
    return s == S.PAUSED


def can_restart(s: Status) -> bool:
    return s not in _GONE


def can_exec(s: Status) -> bool:
    return s == S.RUNNING


def can_remove(s: Status, force: bool = False) -> bool:
    if s == S.REMOVING:
        return False
    return force or s not in _LIVE


def is_running(s: Status) -> bool:
    """Docker's State.Running: true while a process exists, paused or not."""
    return s in _LIVE


def _who(name: str) -> str:
    return name or "container"


def check(current: Status, event: Event, name: str = "") -> None:
    """Raise Conflict/NotModified (Docker's words) if `event` cannot happen now."""
    c, who = Status(current), _who(name)
    e = Event(event)
    if e in (Event.START, Event.RESTART) and c in _GONE:
        raise Conflict("container is marked for removal and cannot be started")
    if e == Event.START:
        if c == S.PAUSED:
            raise Conflict("cannot start a paused container, try unpause instead")
        if c == S.RUNNING:
            raise NotModified("container is already running")
    elif e == Event.STOP:
        if c == S.REMOVING:
            raise Conflict(f"removal of container {who} is already in progress")
        if not can_stop(c):
            raise NotModified("container is already stopped")
    elif e in (Event.EXIT, Event.AUTO_RESTART):
        if c not in ((S.RUNNING, S.PAUSED, S.RESTARTING) if e == Event.EXIT
                     else (S.RUNNING, S.PAUSED)):
            raise Conflict(f"Container {who} is not running")
    elif e == Event.PAUSE:
        if c == S.PAUSED:
            raise Conflict(f"Container {who} is already paused")
        if c == S.RESTARTING:
            raise Conflict(f"Container {who} is restarting, wait until the container is running")
        if c != S.RUNNING:
            raise Conflict(f"Container {who} is not running")
    elif e == Event.UNPAUSE:
        if c != S.PAUSED:
            raise Conflict(f"Container {who} is not paused")
    elif e in (Event.REMOVE, Event.FORCE_REMOVE):
        if c == S.REMOVING:
            raise Conflict(f"removal of container {who} is already in progress")
        if e == Event.REMOVE and c in _LIVE:
            raise Conflict(_remove_refusal(c, who))
    elif e == Event.REMOVE_FAILED:
        if c != S.REMOVING:
            raise Conflict(f"container {who} is not being removed")


def _remove_refusal(c: Status, who: str) -> str:
    if c == S.PAUSED:
        return (f"cannot remove a paused container {who}: unpause and then stop the "
                "container before attempting removal or force remove")
    return (f"cannot remove a {c.value} container {who}: stop the container before "
            "attempting removal or force remove")


_TARGET = {
    Event.START: S.RUNNING, Event.RESTART: S.RUNNING, Event.UNPAUSE: S.RUNNING,
    Event.STOP: S.EXITED, Event.EXIT: S.EXITED, Event.AUTO_RESTART: S.RESTARTING,
    Event.PAUSE: S.PAUSED, Event.REMOVE: S.REMOVING, Event.FORCE_REMOVE: S.REMOVING,
    Event.REMOVE_FAILED: S.DEAD,
}


def transition(current: Status, event: Event, name: str = "") -> Status:
    """The status after `event`; raises Conflict (or NotModified) if impossible."""
    check(current, event, name)
    return _TARGET[Event(event)]


class StateLike(Protocol):
    """What `inspect_state` reads; `records.ContainerState` is one."""

    status: Status
    pid: int
    exit_code: int
    oom_killed: bool
    error: str
    started_at: int | None
    finished_at: int | None


def inspect_state(state: StateLike) -> dict[str, object]:
    """The State object of `docker inspect`, field for field."""
    s = Status(state.status)
    return {
        "Status": s.value,
        "Running": is_running(s),
        "Paused": s == S.PAUSED,
        "Restarting": s == S.RESTARTING,
        "OOMKilled": bool(state.oom_killed),
        "Dead": s == S.DEAD,
        "Pid": state.pid if s in (S.RUNNING, S.PAUSED) else 0,
        "ExitCode": state.exit_code,
        "Error": state.error,
        "StartedAt": rfc3339_nano(state.started_at),
        "FinishedAt": rfc3339_nano(state.finished_at),
    }
