"""Chapter 01 exercises: namespaces and PID 1, judged by the kernel's state.

1. `isolate_hostname(ws, name)` returns a running container's id whose UTS
   namespace is not the host's and whose hostname is `name`. The check
   compares /proc/PID/ns/uts with its own and asks the kernel for the
   hostname inside that namespace (a helper process joins it with setns).
2. `stoppable(ws)` returns a running container whose PID 1 exits when it
   gets SIGTERM, as `docker stop` expects. The check reads the handler mask
   (/proc/PID/status SigCgt), sends SIGTERM and watches the process exit.
3. `rootless(ws)` returns a running container whose process is root inside
   its user namespace but an unprivileged uid on the host. The check reads
   /proc/PID/ns/user, /proc/PID/uid_map and the host's view of its uid.

Each check first gathers facts (`observe_*`), then judges them (`judge_*`),
so every hint can be tested without root.
"""
from __future__ import annotations

import dataclasses
import os
import signal

from .. import namespaces, runtime
from ..errors import ContainerError
from . import Verdict, failed, passed
from . import proc


# --- 1. hostname ---------------------------------------------------------------------------
@dataclasses.dataclass
class HostnameFacts:
    container_id: object
    status: str | None
    exit_code: int | None = None
    own_uts: bool = False  # /proc/PID/ns/uts differs from the checker's (the host's)
    hostname: str | None = None  # inside the container's UTS namespace
    host_hostname: str = ""


def observe_hostname(container_id: object, root: str | None = None) -> HostnameFacts:
    state = proc.container_state(container_id, root) if isinstance(container_id, str) else None
    facts = HostnameFacts(container_id, state.status if state else None, state.exit_code if state else None,
                          host_hostname=os.uname().nodename)
    if state is not None and state.status == "running":
        proc.wait_exec(state)
        facts.own_uts = "uts" in namespaces.differing(state.pid, "self")
        facts.hostname = proc.hostname_in(state.pid)
    return facts


def judge_hostname(facts: HostnameFacts, name: str) -> Verdict:
    cid = facts.container_id
    verdict = proc.lifecycle_verdict(cid, facts.status, facts.exit_code)
    if verdict is not None:
        return verdict
    if not facts.own_uts and facts.host_hostname == name:
        return failed(f"{cid!r} shares the host's UTS namespace, and the HOST is now called {name!r}",
                      "without a UTS namespace of its own, sethostname renames the host: set the host's "
                      "name back (`hostname OLD-NAME`), then keep 'uts' in linux.namespaces")
    if not facts.own_uts:
        return failed(f"{cid!r} shares the host's UTS namespace",
                      "add {'type': 'uts'} to linux.namespaces (runtime.default_spec has it); "
                      "the kernel refuses a hostname in the spec without one")
    if facts.hostname != name:
        return failed(f"{cid!r} has its own UTS namespace, but its hostname is {facts.hostname!r}, not {name!r}",
                      "set the spec's hostname: ws.bundle(..., hostname=name) or spec.hostname = name; "
                      "the init calls sethostname inside the new namespace")
    if facts.host_hostname == name:
        return failed(f"the container is called {name!r}, but so is the host",
                      "choose a name that differs from the host's, so the isolation shows")
    return passed(f"{cid!r} has its own UTS namespace, where the kernel says the hostname is {name!r}; "
                  "the host is not called that")


def hostname_isolated(container_id: object, name: str, root: str | None = None) -> Verdict:
    """Exercise 1: a running container with its own UTS namespace and hostname `name`."""
    return judge_hostname(observe_hostname(container_id, root), name)


# --- 2. SIGTERM -----------------------------------------------------------------------------
@dataclasses.dataclass
class SigtermFacts:
    container_id: object
    status: str | None  # before the signal
    exit_code: int | None = None  # before the signal (if it had already stopped)
    catches_term: bool = False  # SigCgt of PID 1 had the SIGTERM bit
    stopped: bool = False  # it exited within the timeout after SIGTERM
    exit_code_after: int | None = None
    timeout: float = 3.0


def observe_sigterm(container_id: object, timeout: float = 3.0, root: str | None = None) -> SigtermFacts:
    """Note PID 1's handlers, send SIGTERM (as `docker stop` does), wait up to `timeout` s."""
    state = proc.container_state(container_id, root) if isinstance(container_id, str) else None
    facts = SigtermFacts(container_id, state.status if state else None, state.exit_code if state else None,
                         timeout=timeout)
    if state is None or state.status != "running":
        return facts
    proc.wait_exec(state)
    proc.wait_until(lambda: proc.catches(state.pid, signal.SIGTERM), timeout=1.0)  # time to install it
    facts.catches_term = proc.catches(state.pid, signal.SIGTERM)
    try:
        runtime.kill(container_id, "TERM", root=root)
        facts.exit_code_after = runtime.wait(container_id, timeout=timeout, root=root)
        facts.stopped = True
    except ContainerError:  # still running after the timeout (or gone meanwhile)
        after = proc.container_state(container_id, root)
        facts.stopped = after is not None and after.status == "stopped"
        facts.exit_code_after = after.exit_code if after else None
    return facts


def judge_sigterm(facts: SigtermFacts) -> Verdict:
    cid = facts.container_id
    verdict = proc.lifecycle_verdict(cid, facts.status, facts.exit_code,
                                     "with a SIGTERM handler that exits")
    if verdict is not None:
        return verdict
    if not facts.stopped and not facts.catches_term:
        return failed(f"{cid!r} ignored SIGTERM: its PID 1 has no handler for it, so the kernel dropped it",
                      "PID 1 gets only the signals it handles; install a handler, e.g. "
                      "sh -c \"trap 'exit 0' TERM; while true; do sleep 0.1; done\"")
    if not facts.stopped:
        return failed(f"PID 1 of {cid!r} handles SIGTERM but still runs {facts.timeout:g} s later",
                      "the handler must make it exit (trap 'exit 0' TERM), and sh runs a trap only "
                      "after the current foreground command ends: loop over short sleeps, not `sleep 300`")
    if facts.exit_code_after != 0:
        return failed(f"{cid!r} stopped on SIGTERM, but with exit code {facts.exit_code_after}",
                      "a graceful stop exits 0: end the handler with `exit 0`")
    return passed(f"PID 1 of {cid!r} handled SIGTERM and exited with code 0 "
                  f"within {facts.timeout:g} s, as `docker stop` expects")


def stops_on_sigterm(container_id: object, timeout: float = 3.0, root: str | None = None) -> Verdict:
    """Exercise 2: sends SIGTERM to the container and checks that it exits cleanly."""
    return judge_sigterm(observe_sigterm(container_id, timeout, root))


# --- 3. user namespace ------------------------------------------------------------------------
@dataclasses.dataclass
class RootlessFacts:
    container_id: object
    status: str | None
    exit_code: int | None = None
    own_userns: bool = False
    uid_map: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    host_uid: int | None = None  # the process's euid as the host sees it
    inside_uid: int | None = None  # the same uid, seen from inside its user namespace


def observe_rootless(container_id: object, root: str | None = None) -> RootlessFacts:
    state = proc.container_state(container_id, root) if isinstance(container_id, str) else None
    facts = RootlessFacts(container_id, state.status if state else None, state.exit_code if state else None)
    if state is not None and state.status == "running":
        proc.wait_exec(state)
        facts.own_userns = "user" in namespaces.differing(state.pid, "self")
        facts.uid_map = proc.id_map(state.pid)
        facts.host_uid = proc.host_uid(state.pid)
        if facts.host_uid is not None:
            facts.inside_uid = proc.inside_id(facts.host_uid, facts.uid_map)
    return facts


def judge_rootless(facts: RootlessFacts) -> Verdict:
    cid = facts.container_id
    verdict = proc.lifecycle_verdict(cid, facts.status, facts.exit_code)
    if verdict is not None:
        return verdict
    if not facts.own_userns:
        return failed(f"{cid!r} shares the host's user namespace, so its root IS the host's root",
                      "add Namespace('user') to spec.linux.namespaces and map ids: "
                      "spec.linux.uidMappings = spec.linux.gidMappings = [IDMapping(0, 100000, 65536)]")
    if facts.host_uid == 0:
        return failed(f"{cid!r} has a user namespace, but its process is uid 0 on the host "
                      f"(uid_map: {facts.uid_map})",
                      "map container uid 0 to an unprivileged host uid: IDMapping(containerID=0, "
                      "hostID=100000, size=65536), not hostID=0")
    if facts.inside_uid is None:
        return failed(f"the host uid of {cid!r}'s process, {facts.host_uid}, is not in its uid_map, "
                      "so inside it is the overflow uid 65534 (nobody)",
                      "let the mapping cover the process's uid, e.g. IDMapping(0, 100000, 65536)")
    if facts.inside_uid != 0:
        return failed(f"the process of {cid!r} is uid {facts.inside_uid} inside its user namespace, not root",
                      "keep process.user.uid = 0: the point is to be root inside while unprivileged outside")
    return passed(f"{cid!r} runs as root (uid 0) in its own user namespace "
                  f"and as unprivileged uid {facts.host_uid} on the host")


def root_is_unprivileged(container_id: object, root: str | None = None) -> Verdict:
    """Exercise 3: root inside a user namespace, an unprivileged uid outside."""
    return judge_rootless(observe_rootless(container_id, root))
