#!/usr/bin/env python3
"""Where labkit's start path spends its time: phases, interpreter start, imports.

    sudo .venv/bin/python benchmarks/profile_start.py [--runs 10]

1. Phases of one start-to-exit of /bin/true, for the cold CLI (`labkit run`)
   and for the warm API (runtime.run from a Python that already ran it), from
   `strace -f --seccomp-bpf` timestamps of a few syscalls that mark each step
   (only those syscalls stop the tracee, so the distortion is small):
      execve of the shim -> its first fork (stage 1) -> unshare -> first mount
      -> pivot_root -> execve of /bin/true -> its exit -> the shim's exit.
2. Interpreter start and imports, median and min of N runs: bare `python -S`, the
   shim's imports, the CLI's interpreter with site (the editable install's
   finder) and its imports.
3. The slowest imports of the shim (`python -X importtime`, min over runs).

Everything runs in a temp dir named labkit-bench-*, removed at the end. As in
start_latency.py, the processes started get a private bytecode cache there
if the environment forbids writing __pycache__ (PYTHONDONTWRITEBYTECODE).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

TRACED = "execve,clone,clone3,vfork,fork,unshare,mount,pivot_root,exit_group,getppid"
PHASES = [  # (mark, label of the step that ends at this mark)
    ("shim_exec", "API: create() until the monitor is exec'd (CLI: 0, it is its own)"),
    ("stage1_fork", "monitor / CLI: interpreter start, imports, spec load, cgroup, fork"),
    ("unshare", "stage 1: join/unshare namespaces"),
    ("first_mount", "fork of the container init, handshake, setsid"),
    ("pivot", "mounts (proc, dev, devpts, shm, mqueue, sys) + /dev nodes"),
    ("exec_true", "pivot_root .. exec: hostname, user, state.json, start, exec"),
    ("true_exit", "/bin/true runs"),
    ("shim_exit", "monitor: reap, exit.json, exit (CLI: reap, delete, exit)"),
    ("end", "caller: wait, delete, exit (CLI) / return (API)"),
]
API_CODE = """if True:
    import os, sys
    from labkit import runtime
    for _ in range(3):
        runtime.run(sys.argv[1])  # warm: imports done, caches filled
    for _ in range(int(sys.argv[2])):
        os.getppid()   # marks the start for the tracer
        runtime.run(sys.argv[1])
        os.getppid()   # and the end
"""


def parse(path: str) -> list[tuple[int, float, str]]:
    events = []
    with open(path) as f:
        for line in f:
            m = re.match(r"(\d+)\s+(\d+\.\d+)\s+(.*)", line)
            if m:
                events.append((int(m[1]), float(m[2]), m[3]))
    return events


def marks(events: list[tuple[int, float, str]]) -> dict[str, float]:
    """Timestamps of each phase boundary in one start-to-exit."""
    def first(pattern: str, after: float, pid: int | None = None) -> tuple[int, float]:
        for p, t, text in events:
            if t >= after and (pid is None or p == pid) and re.search(pattern, text):
                return p, t
        raise LookupError(pattern)
    t0 = events[0][1]
    try:  # the warm API starts labkit's monitor, which forks the container
        shim, shim_exec = first(r'^execve\(.*"labkit\.monitor"', t0)
    except LookupError:  # the cold CLI forks it itself (runc's process model): no second Python
        shim, shim_exec = events[0][0], t0
    _, stage1 = first(r"^(clone3?|v?fork)\(", shim_exec, shim)
    _, unshare = first(r"^unshare\(", stage1)
    _, mount = first(r"^mount\(", unshare)
    _, pivot = first(r"^pivot_root\(", mount)
    true, exec_true = first(r'^execve\("/bin/true"', pivot)
    _, true_exit = first(r"^exit_group\(", exec_true, true)
    _, shim_exit = first(r"^exit_group\(", true_exit, shim)
    return {"start": t0, "shim_exec": shim_exec, "stage1_fork": stage1, "unshare": unshare,
            "first_mount": mount, "pivot": pivot, "exec_true": exec_true, "true_exit": true_exit,
            "shim_exit": shim_exit, "end": events[-1][1]}


def strace(argv: list[str], out: str) -> list[tuple[int, float, str]]:
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)  # fills caches
    subprocess.run(["strace", "-f", "--seccomp-bpf", "-ttt", "-o", out, "-e", f"trace={TRACED}",
                    "-e", "signal=none", *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    return parse(out)


def phase_table(runs: list[dict[str, float]]) -> list[tuple[str, float]]:
    rows, previous = [], "start"
    for mark, label in PHASES:
        rows.append((label, statistics.median((r[mark] - r[previous]) * 1000 for r in runs)))
        previous = mark
    rows.append(("total", statistics.median((r["end"] - r["start"]) * 1000 for r in runs)))
    return rows


def wall_ms(argv: list[str], runs: int, env: dict[str, str]) -> tuple[float, float]:
    """Median and minimum wall time; on a busy machine the minimum is the steadier one."""
    times = []
    for _ in range(runs + 2):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[2:]), min(times[2:])


def slowest_imports(runs: int, env: dict[str, str], top: int = 15) -> list[tuple[str, float, float]]:
    cumulative, own = collections.defaultdict(list), collections.defaultdict(list)
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", "import labkit.monitor"],
                             env=env, capture_output=True, text=True, check=True).stderr
        for line in err.splitlines():
            parts = line.removeprefix("import time:").split("|")
            if len(parts) == 3 and parts[0].strip().isdigit():
                name = parts[2].strip()
                own[name].append(int(parts[0]))
                cumulative[name].append(int(parts[1]))
    names = sorted(cumulative, key=lambda n: -min(cumulative[n]))[:top]
    return [(n, min(cumulative[n]) / 1000, min(own[n]) / 1000) for n in names]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("strace"):
        print("needs root and strace (apt-get install strace)", file=sys.stderr)
        return 1
    from labkit import rootfs
    from labkit.runtime import default_spec

    labkit_cli = os.path.join(os.path.dirname(sys.executable), "labkit")
    tmp = tempfile.mkdtemp(prefix="labkit-bench-")
    os.chmod(tmp, 0o755)
    env = dict(os.environ, LABKIT_RUN_ROOT=os.path.join(tmp, "run"), PYTHONPATH=REPO)
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        os.environ.update(PYTHONPYCACHEPREFIX=env["PYTHONPYCACHEPREFIX"])
        os.environ.pop("PYTHONDONTWRITEBYTECODE")
    try:
        bundle = os.path.join(tmp, "bundle")
        os.mkdir(bundle)
        default_spec(["/bin/true"], rootfs=rootfs.build_busybox_rootfs(os.path.join(tmp, "rootfs"))).save(bundle)
        trace = os.path.join(tmp, "trace")
        os.environ["LABKIT_RUN_ROOT"] = env["LABKIT_RUN_ROOT"]

        cold = [marks(strace([labkit_cli, "run", bundle], trace)) for _ in range(args.runs)]
        events = strace([sys.executable, "-c", API_CODE, bundle, str(args.runs)], trace)
        main_pid = events[0][0]
        bounds = [t for p, t, text in events if p == main_pid and text.startswith("getppid(")]
        warm = []
        for start, end in zip(bounds[::2], bounds[1::2]):
            segment = [e for e in events if start <= e[1] <= end]
            warm.append(marks(segment))

        print(f"Phases of one start-to-exit of /bin/true (median of {args.runs}, ms, under strace --seccomp-bpf)")
        print(f"{'':66} {'cold CLI':>9} {'warm API':>9}")
        for (label, c), (_, w) in zip(phase_table(cold), phase_table(warm)):
            print(f"  {label:64} {c:9.1f} {w:9.1f}")

        py = sys.executable
        print(f"\nInterpreter start and imports ({args.runs} runs, ms)  {'median':>7} {'min':>7}")
        for label, argv in [
            ("python -S -c pass (the shim's bare interpreter)", [py, "-S", "-c", "pass"]),
            ("python -S -c 'import labkit.monitor' (the monitor's imports)",
             [py, "-S", "-c", "import labkit.monitor"]),
            ("python -c pass (with site: the CLI's interpreter, editable finder)", [py, "-c", "pass"]),
            ("python -c 'import labkit.cli' (the CLI's imports)", [py, "-c", "import labkit.cli"]),
            ("labkit --help (console script, argparse)", [labkit_cli, "--help"]),
        ]:
            median, fastest = wall_ms(argv, args.runs, env)
            print(f"  {label:72} {median:7.1f} {fastest:7.1f}")

        print("\nSlowest imports of the shim (python -S -X importtime, min over runs, ms)")
        print(f"  {'module':40} {'cumulative':>10} {'self':>7}")
        for name, cum, own in slowest_imports(args.runs, env):
            print(f"  {name:40} {cum:10.2f} {own:7.2f}")
        return 0
    finally:
        from labkit import runtime
        for state in runtime.list_containers(os.path.join(tmp, "run", "runtime")):
            runtime.delete(state.id, force=True, root=os.path.join(tmp, "run", "runtime"))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
