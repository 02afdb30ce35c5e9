"""Chapter 03 exercises: limits read back from the kernel's cgroup files.

1. `limit_memory(container_id, mib)` changes a *running* container's memory
   limit, with no swap on top. The check starts a container (64 MiB, no
   swap), calls the learner's function to raise the limit to 96 MiB and then
   to lower it to 48 MiB, and after each call reads the container's cgroup:
   the limit file (memory.max / memory.limit_in_bytes) and the swap file
   (memory.swap.max / memory.memsw.limit_in_bytes). Raising on cgroup v1 is
   the classic trap: the kernel keeps limit <= memory+swap after every write.

2. `edit(spec)` makes a fork bomb harmless: at most 20 processes and at most
   half a CPU. The check runs the bomb with the learner's spec and judges the
   kernel's files (pids.max, cpu.max / cpu.cfs_*) and what the bomb managed:
   how many tasks it held and how much CPU it got.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from typing import Callable, Iterator

from .. import cgroups
from .. import rootfs as lrootfs
from .. import runtime
from ..errors import LabkitError
from ..runtime.spec import Spec
from . import Verdict, all_of, failed, passed

MiB = 1 << 20
BOMB = "sh -c 'f() { f & f; }; f' 2>/dev/null; exec sleep 300"  # every shell forks until refused
PIDS, CPUS = 20, 0.5


# --- running a container for a check ------------------------------------------------------------
@contextlib.contextmanager
def _container(spec: Spec, rootfs: str | None, start: bool = True) -> Iterator[str]:
    """Create (and start) a container from `spec`; yield its id; always delete it."""
    work = tempfile.mkdtemp(prefix="labkit-check-ch03-")
    container_id = f"ch03-{uuid.uuid4().hex[:12]}"
    created = False
    try:
        spec.root.path = rootfs or lrootfs.build_busybox_rootfs(os.path.join(work, "rootfs"))
        bundle = os.path.join(work, "bundle")
        os.mkdir(bundle)
        spec.save(bundle)
        runtime.create(container_id, bundle, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        created = True
        if start:
            runtime.start(container_id)
        yield container_id
    finally:
        try:
            if created:
                runtime.delete(container_id, force=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _running(container_id: str) -> bool:
    return runtime.state(container_id).status == "running"


# --- exercise 1: a live memory limit ----------------------------------------------------------------
def memory_files(group: cgroups.Cgroup) -> tuple[str, str]:
    """(limit file, swap file) of this cgroup version; the swap one as OCI counts it."""
    if group.version == 2:
        return "memory.max", "memory.swap.max"
    return "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"


def _swap_allowed(group: cgroups.Cgroup) -> int | None:
    """Bytes of swap the group may use on top of its limit (None: unlimited; 0 when no swap file)."""
    _, swap_file = memory_files(group)
    if not group.has("memory", swap_file):
        return 0  # no swap accounting in this kernel: nothing to limit
    raw = group.read("memory", swap_file)
    if raw == cgroups.MAX or int(raw) >= 2**62:
        return None
    return int(raw) if group.version == 2 else int(raw) - (group.memory_limit() or 0)


LIMIT_FILES = "memory.max (v2) or memory.limit_in_bytes (v1)"
SWAP_FILES = ("memory.swap.max too: 0, since v2 counts swap alone; on v1 memory.memsw.limit_in_bytes, "
              "the same value as the limit, since v1 counts memory+swap")


def judge_memory(group: cgroups.Cgroup, mib: int, running: bool, before: int | None) -> Verdict:
    """The verdict on the group's limit after `limit_memory(..., mib)`; hints name both versions' files."""
    if not running:
        return failed(f"the container died when you set {mib} MiB",
                      "a limit below what it already uses makes the kernel reclaim, then OOM-kill: "
                      f"did you write {mib} (bytes) instead of {mib} * 2**20?")
    limit = group.memory_limit()
    if limit == mib * MiB:
        swap = _swap_allowed(group)
        if swap != 0:
            what = "unlimited swap" if swap is None else f"{swap // MiB} MiB of swap"
            return failed(f"the limit is {mib} MiB, but the container may use {what} on top",
                          f"write {SWAP_FILES}")
        return passed(f"memory limit is {mib} MiB, with no swap on top")
    if limit == before:
        return failed(f"the memory limit is still {before // MiB} MiB, not {mib} MiB",
                      f"write the number of bytes to {LIMIT_FILES} in the container's cgroup: "
                      "runtime.cgroup(container_id).path('memory', filename) is its path")
    if limit is not None and limit == mib * 1000 * 1000 // 4096 * 4096:
        return failed(f"the limit is {mib} MB (10^6 bytes), not {mib} MiB", "a MiB is 2**20 bytes")
    shown = "unlimited" if limit is None else f"{limit} bytes"
    return failed(f"the memory limit is {shown}, not {mib} MiB ({mib * MiB} bytes)",
                  f"write {mib} * 2**20 to {LIMIT_FILES}")


def live_memory_limit(limit_memory: Callable[[str, int], object], rootfs: str | None = None) -> Verdict:
    """Check `limit_memory(container_id, mib)` on a running container: raise to 96, lower to 48."""
    spec = runtime.default_spec(["sleep", "300"])
    spec.linux.resources = {"memory": {"limit": 64 * MiB, "swap": 64 * MiB}}
    verdicts = []
    with _container(spec, rootfs) as container_id:
        group = runtime.cgroup(container_id)
        for mib in (96, 48):
            before = group.memory_limit()
            try:
                limit_memory(container_id, mib)
            except (LabkitError, OSError) as err:
                return failed(f"setting {mib} MiB failed: {getattr(err, 'what', err)}", _write_failed_hint(err, group))
            except Exception as err:  # the learner's code: report, don't crash the notebook
                return failed(f"your function raised {type(err).__name__}: {err}",
                              "it gets a container id and a size in MiB; write to the files of "
                              "runtime.cgroup(container_id)")
            verdict = judge_memory(group, mib, _running(container_id), before)
            if not verdict:
                return verdict
            verdicts.append(verdict)
    return all_of(*verdicts)


def _write_failed_hint(err: Exception, group: cgroups.Cgroup) -> str:
    text = str(err)
    if group.version == 1 and "Invalid argument" in text:
        return ("cgroup v1 keeps memory.limit_in_bytes <= memory.memsw.limit_in_bytes after every single "
                "write: when raising, write memsw first; when lowering, the limit first")
    if "busy" in text.lower():
        return ("the kernel could not shrink the group that far: it already uses more. "
                "Is the value in bytes (mib * 2**20)?")
    return getattr(err, "hint", "") or "see the error above"


# --- exercise 2: a bomb-proof spec ----------------------------------------------------------------
def _edited(edit: Callable[[Spec], object]) -> Spec | Verdict:
    spec = runtime.default_spec(["sh", "-c", BOMB])
    try:
        result = edit(spec)
    except Exception as err:
        return failed(f"your function raised {type(err).__name__}: {err}",
                      "it receives a labkit.runtime.Spec: set spec.linux.resources, then return the spec")
    if result is not None and not isinstance(result, Spec):
        return failed(f"your function returned a {type(result).__name__}, not a Spec",
                      "change the spec it receives and `return spec` (or return nothing)")
    return result or spec


RESOURCES_HINT = ("set spec.linux.resources to a dict in the OCI format, e.g. "
                  "{'pids': {'limit': 20}, 'cpu': {'quota': 50000, 'period': 100000}}")


def cpu_limit(group: cgroups.Cgroup) -> float | None:
    """CPUs the quota allows (quota / period), from the kernel's files; None if unlimited."""
    if group.version == 2:
        quota, period = group.read("cpu", "cpu.max").split()
        return None if quota == cgroups.MAX else int(quota) / int(period)
    quota = int(group.read("cpu", "cpu.cfs_quota_us"))
    return None if quota < 0 else quota / int(group.read("cpu", "cpu.cfs_period_us"))


def bomb_proof(edit: Callable[[Spec], object], rootfs: str | None = None, watch: float = 1.0) -> Verdict:
    """Run a fork bomb with the spec `edit` makes; judge the cgroup the kernel enforced.

    The container is created first and its pids.max read from the kernel: the bomb
    is started only when the kernel will hold it to PIDS tasks.
    """
    spec = _edited(edit)
    if isinstance(spec, Verdict):
        return spec
    resources = spec.linux.resources if spec.linux else None
    if not resources:
        return failed("spec.linux.resources is empty: the bomb would take every PID and CPU it can",
                      RESOURCES_HINT)
    try:
        with _container(spec, rootfs, start=False) as container_id:
            group = runtime.cgroup(container_id)  # created: its limits are set, nothing runs yet
            pids_max, cpus, shares = group.pids_max(), cpu_limit(group), _shares(group)
            if pids_max is None or pids_max > PIDS:  # never set a real bomb loose on this machine
                return all_of(_judge_pids(pids_max, 0), _judge_cpu(cpus, shares, 0.0))
            runtime.start(container_id)
            start, t0 = group.cpu_stats()["usage_usec"], time.monotonic()
            most = 0
            while time.monotonic() - t0 < watch:
                most = max(most, group.pids_current())
                time.sleep(0.02)
            used = (group.cpu_stats()["usage_usec"] - start) / 1e6 / (time.monotonic() - t0)
    except LabkitError as err:
        hint = RESOURCES_HINT
        if any(word in err.what for word in ("cfs_quota_us", "cpu.max", "cpu.quota")):
            hint = "the quota is microseconds of CPU time per period (50000 of 100000 is half a CPU), not a fraction"
        return failed(f"the container could not be created: {err.what}", hint)
    return all_of(_judge_pids(pids_max, most), _judge_cpu(cpus, shares, used))


def _shares(group: cgroups.Cgroup) -> bool:
    """Whether the CPU weight/shares differ from the default."""
    if group.version == 2:
        return group.has("cpu", "cpu.weight") and group.read("cpu", "cpu.weight") != "100"
    return group.read("cpu", "cpu.shares") != "1024"


def _judge_pids(pids_max: int | None, most: int) -> Verdict:
    if pids_max is None:
        return failed("pids.max is unlimited: the bomb can take every PID of the machine",
                      "add 'pids': {'limit': 20} to spec.linux.resources")
    if pids_max > PIDS:
        return failed(f"pids.max is {pids_max}: more than {PIDS} processes are allowed",
                      f"set 'pids': {{'limit': {PIDS}}}")
    if pids_max < PIDS:
        return failed(f"pids.max is {pids_max}, stricter than asked ({PIDS})",
                      f"set 'pids': {{'limit': {PIDS}}}: too low a limit breaks ordinary programs too")
    if most > PIDS:  # the kernel never allows this; kept so the check reports what it saw
        return failed(f"the bomb held {most} tasks despite pids.max {pids_max}", "see `labkit doctor`")
    return passed(f"pids.max is {PIDS}, and the bomb never held more")


def _judge_cpu(cpus: float | None, shares: bool, used: float) -> Verdict:
    if cpus is None:
        if shares:
            return failed("there is no CPU quota, only a different weight (shares)",
                          "shares only split CPU time under contention; a ceiling is a quota: "
                          "'cpu': {'quota': 50000, 'period': 100000}")
        return failed("there is no CPU quota: the bomb may burn every CPU",
                      "add 'cpu': {'quota': 50000, 'period': 100000} (microseconds per period)")
    if cpus > CPUS + 1e-9:
        return failed(f"the quota allows {cpus:g} CPUs, more than {CPUS:g}",
                      "quota / period is the number of CPUs: 50000 / 100000 is half a CPU")
    if used > CPUS + 0.15:
        return failed(f"the bomb got {used:.2f} CPUs despite a quota of {cpus:g}", "see `labkit doctor`")
    return passed(f"the CPU quota is at most {CPUS:g} CPU, and the bomb got no more")
