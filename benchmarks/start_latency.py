#!/usr/bin/env python3
"""Start-to-exit of /bin/true in the busybox bundle: labkit against runc and crun.

    sudo .venv/bin/python benchmarks/start_latency.py [--runs 30] [--warmup 3]

Rows (each is start-to-exit as its caller sees it, /bin/true in the same rootfs):
  labkit run (cold CLI)      the venv's `labkit run BUNDLE`: a new Python process each time
  labkit-runc run (cold CLI) the venv's `labkit-runc run -b BUNDLE ID`: same shape as `runc run`
  labkit API (warm)          labkit.runtime.run(BUNDLE) from this already-running Python
  labkit API (warm) + cgroup the same with linux.cgroupsPath set: labkit makes a cgroup too
  runc run                   `runc run -b BUNDLE ID` (always makes a cgroup)
  crun run                   `crun run -b BUNDLE ID` (always makes a cgroup)
  crun run, no cgroups       `crun --cgroup-manager=disabled run ...`: no cgroup, like plain labkit

The rows run interleaved, in a new random order every round, so a busy
machine slows them all alike. Reported: median, p10 and p90 (ms), ratios of
the medians against runc and crun, and the peak RSS of the start path, from
separate runs under GNU time (`/usr/bin/time -f %M`, the "Maximum resident set
size" of `time -v`): the largest single process of the tree — CLI, monitor,
container init; runc and `runc init` — not their sum. For the warm API it is
the monitor's VmHWM (the caller is already running; its own size is listed apart).

crun and the cgroup v1 "hybrid" layout: crun refuses a host where cgroup v1
controllers and an empty cgroup2 mount (/sys/fs/cgroup/unified) coexist. On
such a host the crun rows run inside a private mount namespace (`unshare -m`,
then `mount --make-rprivate /` and a lazy unmount of /sys/fs/cgroup/unified
there only: the host's mounts are untouched). A small worker process lives in
that namespace and times each crun run itself, so the unshare costs nothing
per run. On a pure v1 or v2 host crun runs as is.

Bytecode: a normal install caches compiled modules (__pycache__). If this
environment forbids writing them (PYTHONDONTWRITEBYTECODE, as some CI shells
set), every Python start would compile labkit from source, ~10 ms more per
interpreter. So the measured processes get a private cache in the temp dir
(PYTHONPYCACHEPREFIX), filled by the warm-up runs; --no-bytecode-cache
measures without one.

Safety: everything lives in a temp dir named labkit-bench-* (the rootfs, the
bundles, labkit's, runc's and crun's state) and is removed at the end; runc's
and crun's cgroups are named labkit-bench-<pid>/... and those parents are
rmdir'ed (only those that did not exist before). Results go to
benchmarks/results/start_latency.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's labkit, even without the venv

CGROUP_PARENT = f"labkit-bench-{os.getpid()}"  # per run: two runs never share (or remove) it
RESULTS = os.path.join(HERE, "results", "start_latency.json")


# --- the crun worker, inside a private mount namespace ------------------------------------------
def is_hybrid() -> bool:
    """cgroup v1 controllers at /sys/fs/cgroup plus a cgroup2 mount at .../unified."""
    with open("/proc/self/mountinfo") as f:
        mounts = {line.split()[4]: line.split(" - ")[1].split()[0] for line in f}
    return mounts.get("/sys/fs/cgroup") != "cgroup2" and mounts.get("/sys/fs/cgroup/unified") == "cgroup2"


def crun_worker() -> int:
    """Reads `ARGV-as-JSON` lines, runs each, answers `{"seconds", "code", "stderr"}`."""
    if is_hybrid():
        # We are in our own mount namespace (unshare -m): make it private first, so the
        # unmount below cannot propagate to the host, then hide the empty cgroup2 mount.
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)
        subprocess.run(["umount", "-l", "/sys/fs/cgroup/unified"], check=True)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(timed(json.loads(line))), flush=True)
    return 0


def timed(argv: list[str]) -> dict:
    """Run argv once: wall seconds from spawn to exit, exit code, the end of stderr."""
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return {"seconds": time.perf_counter() - start, "code": proc.returncode,
            "stderr": proc.stderr.decode(errors="replace")[-500:]}


def with_time_v(argv: list[str], out: str) -> list[str]:
    """argv under GNU time, writing the peak RSS (KiB, its "Maximum resident set size") to `out`.

    Not measured in-process with wait4(): a child forked by this Python starts with
    this Python's memory, and the kernel counts that in the child's ru_maxrss.
    """
    return ["/usr/bin/time", "-f", "%M", "-o", out, *argv]


class CrunWorker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "-m", "--", sys.executable, os.path.abspath(__file__),
                                      "--crun-worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = self.proc.stdout.readline()
        if not hello:
            raise RuntimeError("the crun worker did not start (is util-linux's unshare installed?)")

    def __call__(self, argv: list[str]) -> dict:
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- cgroups runc and crun make: remove only the parents we caused ---------------------------------
def cgroup_parent_candidates() -> list[str]:
    """labkit-bench under each hierarchy's root (crun) and under our own cgroup in it (runc)."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, (fstype, _, superopts) = pre.split(), post.split()[:3]
            if fstype not in ("cgroup", "cgroup2"):
                continue
            point = fields[4]
            found.append(os.path.join(point, CGROUP_PARENT))
            key = "" if fstype == "cgroup2" else next(
                (k for k in own if k and set(k.split(",")) <= set(superopts.split(","))), None)
            if key in own:
                rel = os.path.relpath(own[key], fields[3])
                found.append(os.path.normpath(os.path.join(point, rel, CGROUP_PARENT)))
    return sorted(set(found))


def remove_new_cgroup_parents(existed: set[str]) -> list[str]:
    removed = []
    for parent in cgroup_parent_candidates():
        if parent in existed or not os.path.isdir(parent):
            continue
        for dirpath, _, _ in sorted(os.walk(parent), key=lambda item: -item[0].count("/")):
            try:
                os.rmdir(dirpath)  # leaves first; a group with processes stays (and is reported)
                removed.append(dirpath)
            except OSError as err:
                print(f"warning: could not remove {dirpath}: {err.strerror}", file=sys.stderr)
    return removed


# --- the measurement -------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def version_of(cmd: str) -> str | None:
    if not shutil.which(cmd):
        return None
    out = subprocess.run([cmd, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="measured runs per row (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs per row first (default 3)")
    parser.add_argument("--output", default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="let the CLI and shim compile labkit from source on every start, if the "
                             "environment says PYTHONDONTWRITEBYTECODE")
    parser.add_argument("--crun-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.crun_worker:
        return crun_worker()
    if os.geteuid() != 0:
        print("run as root: containers need it (sudo .venv/bin/python benchmarks/start_latency.py)",
              file=sys.stderr)
        return 1

    from labkit import rootfs, runtime
    from labkit.runtime import default_spec

    venv_bin = os.path.dirname(sys.executable)
    labkit_cli, labkit_runc = os.path.join(venv_bin, "labkit"), os.path.join(venv_bin, "labkit-runc")
    for script in (labkit_cli, labkit_runc):
        if not os.path.exists(script):
            print(f"{script} is missing: run this with the venv's python (.venv/bin/python)", file=sys.stderr)
            return 1

    tmp = tempfile.mkdtemp(prefix="labkit-bench-")
    os.chmod(tmp, 0o755)
    cgroups_before = {p for p in cgroup_parent_candidates() if os.path.isdir(p)}
    saved_env = {k: os.environ.get(k) for k in ("LABKIT_RUN_ROOT", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    os.environ["LABKIT_RUN_ROOT"] = os.path.join(tmp, "run")  # labkit's state next to runc's and crun's
    bytecode_cache = not args.no_bytecode_cache or not os.environ.get("PYTHONDONTWRITEBYTECODE")
    if not args.no_bytecode_cache and os.environ.get("PYTHONDONTWRITEBYTECODE"):
        os.environ.pop("PYTHONDONTWRITEBYTECODE")  # for the processes we start (CLI, shim) only
        os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
    labkit_root = os.path.join(tmp, "run", "runtime")
    runc_root, crun_root = os.path.join(tmp, "runc-state"), os.path.join(tmp, "crun-state")
    worker = None
    try:
        root = rootfs.build_busybox_rootfs(os.path.join(tmp, "rootfs"))

        def bundle(name: str, cgroups_path: str | None = None, args: list[str] | None = None) -> str:
            path = os.path.join(tmp, name)
            os.mkdir(path)
            spec = default_spec(args or ["/bin/true"], rootfs=root)
            spec.linux.cgroupsPath = cgroups_path
            spec.save(path)
            return path

        plain = bundle("bundle")  # what `labkit run` gets: no cgroup asked for
        with_cgroup = bundle("bundle-cgroup", f"{CGROUP_PARENT}/labkit")
        runc_bundle = bundle("bundle-runc", f"{CGROUP_PARENT}/runc")  # relative: under our own cgroup
        crun_bundle = bundle("bundle-crun", f"{CGROUP_PARENT}/crun")  # crun: under each hierarchy's root

        counter = iter(range(10**9))

        def api(path: str):
            def run() -> dict:
                start = time.perf_counter()
                result = runtime.run(path)
                return {"seconds": time.perf_counter() - start, "code": result.exit_code,
                        "stderr": result.stderr}
            return run

        rows: dict[str, object] = {
            "labkit run (cold CLI)": lambda: timed([labkit_cli, "run", plain]),
            "labkit-runc run (cold CLI)": lambda: timed([labkit_runc, "--root", labkit_root, "run", "-b", plain,
                                                          f"lk{next(counter)}"]),
            "labkit API (warm)": api(plain),
            "labkit API (warm) + cgroup": api(with_cgroup),
        }
        if shutil.which("runc"):
            rows["runc run"] = lambda: timed(["runc", "--root", runc_root, "run", "-b", runc_bundle,
                                              f"rc{next(counter)}"])
        if shutil.which("crun"):
            worker = CrunWorker()
            rows["crun run"] = lambda: worker(["crun", "--root", crun_root, "run", "-b", crun_bundle,
                                               f"cr{next(counter)}"])
            rows["crun run, no cgroups"] = lambda: worker(["crun", "--cgroup-manager=disabled", "--root", crun_root,
                                                           "run", "-b", crun_bundle, f"cd{next(counter)}"])

        rss_argv: dict[str, object] = {
            "labkit run (cold CLI)": lambda out: timed(with_time_v([labkit_cli, "run", plain], out)),
            "labkit-runc run (cold CLI)": lambda out: timed(with_time_v(
                [labkit_runc, "--root", labkit_root, "run", "-b", plain, f"lk{next(counter)}"], out)),
        }
        if "runc run" in rows:
            rss_argv["runc run"] = lambda out: timed(with_time_v(
                ["runc", "--root", runc_root, "run", "-b", runc_bundle, f"rc{next(counter)}"], out))
        if "crun run" in rows:
            rss_argv["crun run"] = lambda out: worker(with_time_v(
                ["crun", "--root", crun_root, "run", "-b", crun_bundle, f"cr{next(counter)}"], out))
            rss_argv["crun run, no cgroups"] = lambda out: worker(with_time_v(
                ["crun", "--cgroup-manager=disabled", "--root", crun_root, "run", "-b", crun_bundle,
                 f"cd{next(counter)}"], out))

        samples: dict[str, list[dict]] = {name: [] for name in rows}
        load_before = os.getloadavg()
        names = list(rows)
        for round_no in range(args.warmup + args.runs):
            random.shuffle(names)
            for name in names:
                sample = rows[name]()
                if sample["code"] != 0:
                    raise RuntimeError(f"{name} failed (exit {sample['code']}): {sample['stderr']}")
                if round_no >= args.warmup:
                    samples[name].append(sample)
        load_after = os.getloadavg()

        rss: dict[str, int | None] = {}
        if os.path.exists("/usr/bin/time"):
            out = os.path.join(tmp, "rss")
            for name, run in rss_argv.items():
                kib = []
                for _ in range(5):
                    run(out)
                    with open(out) as f:
                        kib.append(int(f.read().split()[-1]))
                rss[name] = int(statistics.median(kib))
        rss.update(api_peak_rss_kb(bundle("bundle-sleep-rss", None, ["sleep", "10"])))
        report = summarize(samples, rss)
        report["machine"] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "kernel": platform.release(), "arch": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "runc": version_of("runc"), "crun": version_of("crun"),
            "cgroup_layout": "hybrid (v1 + empty cgroup2)" if is_hybrid() else
            ("v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"),
            "crun_in_private_mount_namespace": bool(worker) and is_hybrid(),
            "loadavg_before": load_before, "loadavg_after": load_after,
            "runs": args.runs, "warmup": args.warmup, "bytecode_cache": bytecode_cache,
        }
        print_table(report)
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"\nwritten to {args.output}")
        return 0
    finally:
        if worker is not None:
            worker.close()
        cleanup(runtime_root=labkit_root, runc_root=runc_root, crun_root=crun_root)
        remove_new_cgroup_parents(cgroups_before)
        shutil.rmtree(tmp, ignore_errors=True)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def api_peak_rss_kb(bundle: str) -> dict[str, int]:
    """Peak RSS (VmHWM) of the warm API's two processes, from a fresh Python.

    The caller is a Python that imported labkit and created a container; the
    monitor is `python -S -m labkit.monitor`, read while the container runs
    (its imports and set-up are done by then; only waiting is left).
    """
    code = """if True:
        import json, sys
        from labkit import runtime
        def hwm(pid):
            with open(f"/proc/{pid}/status") as f:
                return int(next(l.split()[1] for l in f if l.startswith("VmHWM:")))
        runtime.create("rss-probe", sys.argv[1])
        try:
            shim = runtime.state("rss-probe").monitor_pid
            print(json.dumps({"labkit API (warm)": hwm(shim), "API caller": hwm("self")}))
        finally:
            runtime.delete("rss-probe", force=True)
    """
    out = subprocess.run([sys.executable, "-c", code, bundle], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def cleanup(runtime_root: str, runc_root: str, crun_root: str) -> None:
    """Containers a failed run may have left: labkit's, runc's and crun's (all in our temp dir)."""
    from labkit import runtime
    try:
        for state in runtime.list_containers(runtime_root):
            runtime.delete(state.id, force=True, root=runtime_root)
    except Exception as err:  # noqa: BLE001 - cleanup goes on
        print(f"warning: labkit cleanup: {err}", file=sys.stderr)
    for tool, root in (("runc", runc_root), ("crun", crun_root)):
        if not shutil.which(tool) or not os.path.isdir(root):
            continue
        listed = subprocess.run([tool, "--root", root, "list", "-q"], capture_output=True, text=True)
        for cid in listed.stdout.split():
            subprocess.run([tool, "--root", root, "delete", "--force", cid], capture_output=True)


def summarize(samples: dict[str, list[dict]], rss: dict[str, int]) -> dict:
    rows = {}
    for name, runs in samples.items():
        ms = [s["seconds"] * 1000 for s in runs]
        rows[name] = {"median_ms": statistics.median(ms), "p10_ms": percentile(ms, 0.1),
                      "p90_ms": percentile(ms, 0.9), "min_ms": min(ms), "mean_ms": statistics.fmean(ms),
                      "runs": len(ms), "peak_rss_kb": rss.get(name)}
    if "labkit API (warm)" in rows:
        rows["labkit API (warm)"]["caller_rss_kb"] = rss.get("API caller")
    for peer in ("runc run", "crun run"):
        if peer in rows:
            base = rows[peer]["median_ms"]
            for row in rows.values():
                row[f"ratio_vs_{peer.split()[0]}"] = row["median_ms"] / base
    return {"rows": rows}


def print_table(report: dict) -> None:
    rows = report["rows"]
    has_runc, has_crun = "runc run" in rows, "crun run" in rows
    header = f"{'':28} {'median':>8} {'p10':>8} {'p90':>8}"
    header += f" {'x runc':>7}" if has_runc else ""
    header += f" {'x crun':>7}" if has_crun else ""
    print(header + f" {'peak RSS':>10}")
    for name, row in rows.items():
        line = f"{name:28} {row['median_ms']:7.1f}ms {row['p10_ms']:6.1f}ms {row['p90_ms']:6.1f}ms"
        line += f" {row['ratio_vs_runc']:6.2f}x" if has_runc else ""
        line += f" {row['ratio_vs_crun']:6.2f}x" if has_crun else ""
        rss = row.get("peak_rss_kb")
        print(line + (f" {rss / 1024:8.1f}MiB" if rss else f" {'-':>10}"))
    caller = rows.get("labkit API (warm)", {}).get("caller_rss_kb")
    if caller:
        print(f"(warm API: peak RSS is the monitor's; the calling Python itself: {caller / 1024:.1f}MiB)")
    m = report["machine"]
    print(f"\n{m['runs']} runs per row (+{m['warmup']} warm-up), interleaved; kernel {m['kernel']}, "
          f"{m['cpus']} CPUs, cgroups {m['cgroup_layout']}, load {m['loadavg_before'][0]:.2f} -> "
          f"{m['loadavg_after'][0]:.2f}; bytecode cache {'on' if m['bytecode_cache'] else 'off'}")


if __name__ == "__main__":
    sys.exit(main())
