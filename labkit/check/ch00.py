"""Chapter 00 exercise: start your first container, and see it is a process on the host.

The learner writes `start_first_container(ws, container_id)`, which creates
and starts a container running `sleep 300` and returns its id. The check
reads the kernel's view of that container's process from the host:

- it exists and runs (the runtime's state, confirmed by /proc/PID);
- /proc/PID/cmdline: the process is `sleep`;
- /proc/PID/status NSpid: it has a host PID *and* is PID 1 of its own PID namespace;
- /proc/PID/ns/*: its pid, mount, uts, ipc and network namespaces are not the host's.
"""
from __future__ import annotations

import dataclasses
import os

from .. import namespaces
from . import Verdict, failed, passed
from . import proc

#: the namespaces a container must not share with the host in this exercise
ISOLATED = ("pid", "mount", "uts", "ipc", "network")


@dataclasses.dataclass
class FirstContainerFacts:
    """What the kernel says about the learner's container (None status: no such container)."""

    container_id: object
    status: str | None
    exit_code: int | None = None
    args: list[str] = dataclasses.field(default_factory=list)  # /proc/PID/cmdline
    ns_pids: list[int] = dataclasses.field(default_factory=list)  # NSpid: host PID first, own last
    shared: list[str] = dataclasses.field(default_factory=list)  # ISOLATED types shared with the host


def observe(container_id: object, root: str | None = None) -> FirstContainerFacts:
    state = proc.container_state(container_id, root) if isinstance(container_id, str) else None
    if state is None:
        return FirstContainerFacts(container_id, None)
    facts = FirstContainerFacts(container_id, state.status, state.exit_code)
    if state.status == "running":
        proc.wait_exec(state)
        facts.args = proc.cmdline(state.pid)
        facts.ns_pids = proc.ns_pids(state.pid)
        isolated = set(namespaces.differing(state.pid, "self"))
        facts.shared = [t for t in ISOLATED if t not in isolated]
    return facts


def judge(facts: FirstContainerFacts) -> Verdict:
    cid = facts.container_id
    verdict = proc.lifecycle_verdict(cid, facts.status, facts.exit_code, "['sleep', '300']")
    if verdict is not None:
        return verdict
    program = os.path.basename(facts.args[0]) if facts.args else "nothing"
    if program != "sleep":
        return failed(f"PID 1 of {cid!r} runs {program!r}, not sleep",
                      "make the bundle with args ['sleep', '300']: ws.bundle(name, ['sleep', '300'])")
    if len(facts.ns_pids) < 2 or facts.ns_pids[-1] != 1:
        return failed(f"the sleep of {cid!r} is not PID 1 of a PID namespace of its own",
                      "keep 'pid' in linux.namespaces (runtime.default_spec has it): "
                      "the first process in a new PID namespace is its PID 1")
    if facts.shared:
        return failed(f"{cid!r} shares these namespaces with the host: {', '.join(facts.shared)}",
                      "keep the default namespaces (runtime.default_spec, or ws.bundle, sets them all); "
                      "a shared namespace means the container sees the host's one")
    return passed(f"{cid!r} runs sleep as PID 1 of its own namespaces, "
                  "and the host sees it as an ordinary process")


def first_container(container_id: object, root: str | None = None) -> Verdict:
    """Check the learner's running container (see the module docstring)."""
    return judge(observe(container_id, root))
