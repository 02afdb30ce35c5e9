#!/usr/bin/env python3
"""labkit's engine next to podman: container churn, `ps -a` over 1,000 records, log throughput, monitor memory.

    sudo .venv/bin/python benchmarks/engine.py [--n 100]
    sudo .venv/bin/python benchmarks/engine.py --n 30 --records 300 --log-mb 20   # a quicker look

Both sides are driven through their CLIs (`labkit …` from this venv, `podman …`) in the
same run, on the same image: labkit's offline busybox, exported as an OCI layout and
pulled into podman. Rows (ratio = labkit / podman; below 1 means labkit is faster or smaller):

  churn            create + start + stop -t 0 + rm of one `sleep 300` container, N times
                   (--n, default 100) per side, the two sides alternating container by
                   container; total time, containers per second, median per verb
  ps -a            `ps -a` with no container, then with --records (default 1,000) created
                   and never started (`create` only); median of --ps-runs calls, interleaved
  log throughput   a container writing --log-mb MiB (default 50) to stdout as 100-character
                   lines (`head -c 50m /dev/zero | tr '\\0' x | fold -w 100; echo`): from `run -d`
                   until `wait` has returned and the log file holds every line (labkit's
                   monitor → json-file; podman's conmon → k8s-file); payload MB/s, median of
                   --log-runs; the log's size on disk
  monitor memory   one idle `sleep` container each: labkit's monitor (a Python process) vs
                   conmon, from /proc/PID/smaps_rollup: USS (Private_Clean + Private_Dirty),
                   PSS and RSS

podman on this machine (as tests/integration/test_engine_vs_podman.py runs it): root,
`--runtime runc`, `--cgroup-manager cgroupfs`, `--events-backend file`, private
--root/--runroot/--tmpdir in the temp dir, `--network none`, lowered ulimits (root lacks
CAP_SYS_RESOURCE here), `--cgroup-parent /labkit-bench-<pid>`. labkit: LABKIT_DATA_ROOT and
LABKIT_RUN_ROOT in the temp dir. The setup creates (records for `ps -a`) run --jobs at a time.

Timings are never asserted. Safety: everything lives in /tmp/labkit-bench-<random>; at the
end every container of both sides is removed, podman's storage reset and unmounted, the
cgroup parent podman made removed, and the temp dir deleted — also after a failure or ^C.
Results: printed, and written to benchmarks/results/engine.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's labkit, even without the venv
sys.path.insert(0, HERE)

from pull import child_python_env, machine  # noqa: E402

RESULTS = os.path.join(HERE, "results", "engine.json")
CGROUP_PARENT = f"labkit-bench-{os.getpid()}"
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
PODMAN_IMAGE = "localhost/lkbusybox"
LINE = 100  # characters per log line, plus its newline


class Tool:
    """One side, driven through its CLI."""

    def __init__(self, name: str, argv: list[str], image: str, create_flags: list[str], env: dict[str, str]):
        self.name, self.argv, self.image, self.create_flags, self.env = name, argv, image, create_flags, env

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        r = subprocess.run([*self.argv, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=self.env, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{self.name} {' '.join(args[:3])}… failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def create(self, name: str, *command: str) -> None:
        self("create", *self.create_flags, "--name", name, self.image, *command)

    def run_detached(self, name: str, *command: str) -> None:
        self("run", "-d", *self.create_flags, "--name", name, self.image, *command)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


# --- 1. churn -----------------------------------------------------------------------------------------------
def churn(tools: list[Tool], n: int, warmup: int = 3) -> dict[str, dict]:
    verbs = ("create", "start", "stop", "rm")
    samples = {t.name: {v: [] for v in (*verbs, "cycle")} for t in tools}
    for i in range(warmup + n):
        order = tools[:] if i % 2 == 0 else tools[::-1]
        for tool in order:
            name = f"churn{i}"
            steps = {"create": lambda: tool.create(name, "sleep", "300"), "start": lambda: tool("start", name),
                     "stop": lambda: tool("stop", "-t", "0", name), "rm": lambda: tool("rm", name)}
            took = {verb: timed(steps[verb]) for verb in verbs}
            if i >= warmup:
                for verb, seconds in took.items():
                    samples[tool.name][verb].append(seconds)
                samples[tool.name]["cycle"].append(sum(took.values()))
    out = {}
    for tool in tools:
        s = samples[tool.name]
        total = sum(s["cycle"])
        out[tool.name] = {"containers": n, "total_s": total, "per_second": n / total,
                          "cycle_median_ms": median_ms(s["cycle"]),
                          **{f"{v}_median_ms": median_ms(s[v]) for v in verbs}}
    return out


# --- 2. ps -a -------------------------------------------------------------------------------------------------
def ps_latency(tools: list[Tool], runs: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {t.name: [] for t in tools}
    tools = tools[:]
    for _ in range(runs + 1):  # the first round warms caches and is dropped
        random.shuffle(tools)
        for tool in tools:
            samples[tool.name].append(timed(lambda: tool("ps", "-a")))
    return {name: s[1:] for name, s in samples.items()}


def create_records(tool: Tool, count: int, jobs: int) -> float:
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda i: tool.create(f"rec{i}", "true"), range(count)))
    listed = tool("ps", "-aq").stdout.split()
    if len(listed) != count:
        raise RuntimeError(f"{tool.name}: {len(listed)} records after creating {count}")
    return time.perf_counter() - t0


def ps_rows(tools: list[Tool], records: int, runs: int, jobs: int) -> dict[str, dict]:
    empty = ps_latency(tools, runs)
    setup = {t.name: create_records(t, records, jobs) for t in tools}
    full = ps_latency(tools, runs)
    for t in tools:
        lines = t("ps", "-a").stdout.strip().splitlines()
        assert len(lines) == records + 1, (t.name, len(lines))  # a header and every record
    return {t.name: {"empty_median_ms": median_ms(empty[t.name]), "records": records,
                     "full_median_ms": median_ms(full[t.name]), "runs": runs,
                     "create_records_s": setup[t.name]} for t in tools}


def remove_all(tools: list[Tool], engine: Any) -> None:
    for t in tools:
        if t.name == "podman":
            t("rm", "--all", "--force", "--time", "0", check=False)
        else:  # the engine API: the same as `labkit rm -f`, without 1,000 interpreter starts
            for rec in engine.list(all=True):
                engine.remove(rec.id, force=True, remove_volumes=True)


# --- 3. log throughput ------------------------------------------------------------------------------------------
def lines_in_log(tool: Tool, engine: Any, name: str) -> tuple[int, int, str]:
    """(complete stdout lines, payload bytes, log path) in the tool's log file right now."""
    if tool.name == "labkit":
        path = engine.log_path(engine.get(name))
        count = size = 0
        with open(path, "rb") as f:
            for raw in f:
                entry = json.loads(raw)
                if entry["stream"] == "stdout":
                    size += len(entry["log"])
                    count += entry["log"].endswith("\n")
        return count, size, path
    path = tool("inspect", "--format", "{{.HostConfig.LogConfig.Path}}", name).stdout.strip()
    count = size = 0
    with open(path, "rb") as f:  # k8s-file: TIME STREAM F|P CONTENT; P = a partial line, continued
        for raw in f:
            _, stream, tag, *rest = raw.rstrip(b"\n").split(b" ", 3)
            content = rest[0] if rest else b""
            if stream == b"stdout":
                size += len(content) + (tag == b"F")
                count += tag == b"F"
    return count, size, path


def log_throughput(tools: list[Tool], engine: Any, mib: int, runs: int) -> dict[str, dict]:
    chars = mib * 2**20
    lines = -(-chars // LINE)
    payload = chars + lines  # each line ends in a newline: fold ends the last without one, echo adds it
    script = f"head -c {mib}m /dev/zero | tr '\\0' x | fold -w {LINE}; echo"
    samples: dict[str, list[float]] = {t.name: [] for t in tools}
    disk: dict[str, int] = {}
    tools = tools[:]
    for run in range(runs):
        random.shuffle(tools)
        for tool in tools:
            name = f"log{run}"
            t0 = time.perf_counter()
            tool.run_detached(name, "sh", "-c", script)
            code = tool("wait", name).stdout.strip()
            while True:  # until the log holds it all (it does by the time wait returns, on both)
                count, size, path = lines_in_log(tool, engine, name)
                if count >= lines or time.perf_counter() - t0 > 300:
                    break
                time.sleep(0.05)
            seconds = time.perf_counter() - t0
            if code != "0" or (count, size) != (lines, payload):
                raise RuntimeError(f"{tool.name}: exit {code}, {count} of {lines} lines, {size} of {payload} bytes")
            samples[tool.name].append(seconds)
            disk[tool.name] = os.path.getsize(path)
            tool("rm", "-f", name)
    return {t.name: {"mib": mib, "lines": lines, "payload_bytes": payload, "runs": runs,
                     "median_s": statistics.median(samples[t.name]),
                     "mb_per_s": payload / 1e6 / statistics.median(samples[t.name]),
                     "log_file_bytes": disk[t.name]} for t in tools}


# --- 4. monitor memory ------------------------------------------------------------------------------------------
def smaps_rollup(pid: int) -> dict[str, int]:
    """KiB fields of /proc/PID/smaps_rollup, with USS = Private_Clean + Private_Dirty."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return {"rss_kib": fields["Rss"], "pss_kib": fields["Pss"],
            "uss_kib": fields["Private_Clean"] + fields["Private_Dirty"]}


def monitor_memory(tools: list[Tool], engine: Any) -> dict[str, dict]:
    pids = {}
    for tool in tools:
        tool.run_detached("idle", "sleep", "300")
        if tool.name == "labkit":
            pids[tool.name] = engine.get("idle").state.monitor_pid
        else:
            pids[tool.name] = int(tool("inspect", "--format", "{{.State.ConmonPid}}", "idle").stdout)
    time.sleep(2)  # both idle: the container sleeps, the monitor waits in poll()
    out = {}
    for tool in tools:
        with open(f"/proc/{pids[tool.name]}/comm") as f:
            comm = f.read().strip()
        out[tool.name] = {"pid_comm": comm, **smaps_rollup(pids[tool.name])}
        tool("rm", "-f", "idle")
    return out


# --- set-up and clean-up ------------------------------------------------------------------------------------------
def make_tools(tmp: str) -> list[Tool]:
    labkit_cli = os.path.join(os.path.dirname(sys.executable), "labkit")
    labkit = Tool("labkit", [labkit_cli], "busybox", [], child_python_env(tmp))
    podman = Tool("podman", ["podman", "--root", f"{tmp}/podman/storage", "--runroot", f"{tmp}/podman/run",
                             "--tmpdir", f"{tmp}/podman/tmp", "--cgroup-manager", "cgroupfs",
                             "--events-backend", "file", "--runtime", "runc"], PODMAN_IMAGE,
                  ["--network", "none", "--cgroup-parent", f"/{CGROUP_PARENT}", *ULIMITS], dict(os.environ))
    return [labkit, podman]


def same_image(tmp: str, podman: Tool) -> None:
    """labkit's busybox (built offline on first use), and the same layers in podman."""
    from labkit.images import builtin
    from labkit.images.base import export_layout
    from labkit.images.store import Store

    store = Store(os.path.join(os.environ["LABKIT_DATA_ROOT"], "images"))
    builtin.ensure(store, "busybox", notify=None)
    image = builtin.open_image_or_builtin(store, "busybox")
    layout = export_layout(image, os.path.join(tmp, "layout"), "busybox")
    pulled = podman("pull", "-q", f"oci:{layout}:busybox").stdout.strip()
    podman("tag", pulled, PODMAN_IMAGE)
    layers = json.loads(podman("image", "inspect", "--format", "{{json .RootFS.Layers}}", PODMAN_IMAGE).stdout)
    if layers != image.diff_ids:
        raise RuntimeError(f"podman's image differs from labkit's: {layers} != {image.diff_ids}")


def cleanup(tmp: str, tools: list[Tool], engine: Any) -> None:
    for tool in tools:
        try:
            remove_all([tool], engine)
        except Exception as err:  # noqa: BLE001 - cleanup goes on
            print(f"warning: {tool.name} cleanup: {err}", file=sys.stderr)
    podman = next((t for t in tools if t.name == "podman"), None)
    if podman:
        podman("system", "reset", "--force", check=False)
    with open("/proc/self/mountinfo") as f:  # what podman left mounted below its root, innermost first
        points = [line.split()[4] for line in f if line.split()[4].startswith(tmp + "/")]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    for hierarchy in [os.path.join("/sys/fs/cgroup", CGROUP_PARENT)] + [
            os.path.join(h.path, CGROUP_PARENT) for h in os.scandir("/sys/fs/cgroup") if h.is_dir()]:
        for dirpath, _, _ in sorted(os.walk(hierarchy), key=lambda item: -item[0].count("/")):
            for _ in range(50):  # podman leaves its --cgroup-parent (and conmon's group in it) behind
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                print(f"warning: could not remove {dirpath}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)


# --- report ---------------------------------------------------------------------------------------------------------
def table(report: dict) -> str:
    rows: list[tuple[str, str, str, str]] = []

    def add(label: str, lk: float, pm: float, fmt: str, unit: str) -> None:
        rows.append((label, f"{lk:{fmt}} {unit}", f"{pm:{fmt}} {unit}", f"{lk / pm:.2f}"))

    c = report["churn"]
    n = c["labkit"]["containers"]
    add(f"churn: {n} × create+start+stop+rm, total", c["labkit"]["total_s"], c["podman"]["total_s"], ".1f", "s")
    add("churn: containers per second", c["labkit"]["per_second"], c["podman"]["per_second"], ".2f", "/s")
    for verb in ("cycle", "create", "start", "stop", "rm"):
        add(f"churn: {verb}, median", c["labkit"][f"{verb}_median_ms"], c["podman"][f"{verb}_median_ms"], ".0f",
            "ms")
    p = report["ps"]
    add("ps -a, no containers, median", p["labkit"]["empty_median_ms"], p["podman"]["empty_median_ms"], ".0f", "ms")
    add(f"ps -a, {p['labkit']['records']:,} created, median", p["labkit"]["full_median_ms"],
        p["podman"]["full_median_ms"], ".0f", "ms")
    lg = report["logs"]
    add(f"logs: {lg['labkit']['mib']} MiB stdout, run -d..logged", lg["labkit"]["median_s"], lg["podman"]["median_s"],
        ".2f", "s")
    add("logs: throughput", lg["labkit"]["mb_per_s"], lg["podman"]["mb_per_s"], ".1f", "MB/s")
    add("logs: log file on disk", lg["labkit"]["log_file_bytes"] / 1e6, lg["podman"]["log_file_bytes"] / 1e6, ".1f",
        "MB")
    m = report["memory"]
    for key, label in (("uss_kib", "USS"), ("pss_kib", "PSS"), ("rss_kib", "RSS")):
        add(f"monitor vs conmon, idle: {label}", m["labkit"][key] / 1024, m["podman"][key] / 1024, ".2f", "MiB")
    widths = [max(len(r[i]) for r in rows + [("", "labkit", "podman", "labkit/podman")]) for i in range(4)]
    head = ("", "labkit", "podman", "labkit/podman")
    out = [f"{head[0]:{widths[0]}}  {head[1]:>{widths[1]}}  {head[2]:>{widths[2]}}  {head[3]:>{widths[3]}}"]
    out += [f"{a:{widths[0]}}  {b:>{widths[1]}}  {c_:>{widths[2]}}  {d:>{widths[3]}}" for a, b, c_, d in rows]
    return "\n".join(out)


def version_of(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="containers per side in the churn (default 100)")
    parser.add_argument("--records", type=int, default=1000, help="created containers for ps -a (default 1000)")
    parser.add_argument("--ps-runs", type=int, default=10, help="ps -a calls per side and size (default 10)")
    parser.add_argument("--log-mb", type=int, default=50, help="MiB a container writes to stdout (default 50)")
    parser.add_argument("--log-runs", type=int, default=3, help="log runs per side (default 3)")
    parser.add_argument("--jobs", type=int, default=4, help="parallel creates while setting up ps -a (default 4)")
    parser.add_argument("--output", default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: sudo .venv/bin/python benchmarks/engine.py", file=sys.stderr)
        return 1
    if not shutil.which("podman"):
        print("podman is not installed (./lab.sh setup installs it)", file=sys.stderr)
        return 1
    tmp = os.path.join(tempfile.gettempdir(), f"labkit-bench-{os.urandom(4).hex()}")  # lower case: podman
    os.mkdir(tmp, 0o755)                                       # names the pulled image after this path
    os.environ["LABKIT_DATA_ROOT"] = os.path.join(tmp, "labkit")
    os.environ["LABKIT_RUN_ROOT"] = os.path.join(tmp, "labkit-run")
    from labkit.engine.containers import Engine

    labkit_cli = os.path.join(os.path.dirname(sys.executable), "labkit")
    if not os.path.exists(labkit_cli):
        print(f"{labkit_cli} is missing: run this with the venv's python (.venv/bin/python)", file=sys.stderr)
        return 1
    tools = make_tools(tmp)
    engine = Engine(os.environ["LABKIT_DATA_ROOT"])
    try:
        same_image(tmp, tools[1])
        report: dict[str, Any] = {"machine": {**machine(), "podman": version_of(["podman", "--version"]),
                                              "conmon": version_of(["conmon", "--version"]),
                                              "runc": version_of(["runc", "--version"])}}
        load_before = os.getloadavg()
        print(f"churn: {args.n} containers per side …", file=sys.stderr, flush=True)
        report["churn"] = churn(tools, args.n)
        print(f"ps -a: creating {args.records} records per side …", file=sys.stderr, flush=True)
        report["ps"] = ps_rows(tools, args.records, args.ps_runs, args.jobs)
        remove_all(tools, engine)
        print(f"logs: {args.log_mb} MiB × {args.log_runs} per side …", file=sys.stderr, flush=True)
        report["logs"] = log_throughput(tools, engine, args.log_mb, args.log_runs)
        report["memory"] = monitor_memory(tools, engine)
        report["machine"]["loadavg_before"], report["machine"]["loadavg_after"] = load_before, os.getloadavg()
        report["ratios_labkit_over_podman"] = {
            "churn_total": report["churn"]["labkit"]["total_s"] / report["churn"]["podman"]["total_s"],
            "ps_a_full": report["ps"]["labkit"]["full_median_ms"] / report["ps"]["podman"]["full_median_ms"],
            "log_mb_per_s": report["logs"]["labkit"]["mb_per_s"] / report["logs"]["podman"]["mb_per_s"],
            "monitor_uss": report["memory"]["labkit"]["uss_kib"] / report["memory"]["podman"]["uss_kib"],
            "monitor_pss": report["memory"]["labkit"]["pss_kib"] / report["memory"]["podman"]["pss_kib"],
        }
        print(table(report))
        m = report["machine"]
        print(f"\n{platform.system()} {m['kernel']}, {m['cpus']} CPUs; {m['podman']}, {m['conmon']}; "
              f"load {load_before[0]:.2f} -> {m['loadavg_after'][0]:.2f}")
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"written to {args.output}")
        return 0
    finally:
        cleanup(tmp, tools, engine)


if __name__ == "__main__":
    sys.exit(main())
