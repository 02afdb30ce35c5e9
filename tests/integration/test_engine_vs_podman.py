"""The engine next to podman: the same lifecycle, log and volume scenarios, what a user sees.

Each test runs one scenario with `podman` and with `labkit` (both through their CLIs, in
subprocesses) and compares what a user observes: exit codes, `inspect --format` values,
`logs` output, files in volumes. Both run the same image: labkit's offline busybox,
exported as an OCI layout and pulled into podman (`podman pull oci:DIR:busybox`); the
fixture checks that podman's copy has the same layer (diff_id).

podman on this machine (the CI host: Debian 12, podman 4.3.1, conmon 2.1.6, cgroup v1
hybrid, no systemd session):
- root, `--runtime runc` (podman's default crun refuses a v1 hybrid host), `--cgroup-manager
  cgroupfs`, `--events-backend file`, private --root/--runroot/--tmpdir in a labkit-podman-*
  temp dir, `--network none`, a `--cgroup-parent` named labkit-podman-<pid> (so the leak
  check would see one left behind), and lowered ulimits (root here lacks CAP_SYS_RESOURCE,
  podman's default nofile 1048576 needs it);
- `--init` needs `--init-path`: podman's default catatonit is not installed, so podman gets
  the same tini labkit's `--init` uses;
- OOMKilled: conmon 2.1.6 writes its `oom` marker into its working directory, which is the
  podman caller's, while podman 4.3 looks for it in the container's bundle dir (StaticDir):
  `podman run` never reports OOMKilled here (podman issue 13102; PRs 17756 and 21523 later
  reworked where podman looks). The OOM test therefore runs `podman create`, then `podman start -a` with the
  container's StaticDir as its working directory, so conmon's marker lands where podman
  reads it. That is podman's own detection, only pointed at the right directory.

Known differences that are podman's, not labkit's (labkit follows Docker there; each is
asserted below so a change on either side shows):
- State.Running of a paused container: Docker and labkit true, podman false;
- State.ExitCode of a container whose command cannot be executed (it stays created on both):
  Docker and labkit 127 or 126, podman 0;
- Mounts[].Mode of a `:ro` bind: Docker and labkit "ro", podman "";
- a volume mounted over /etc also gets podman's own mount points (hostname, hosts, mtab)
  besides the image's copied-up files.

Not in the `vm` selection: podman in the Vagrant VM (Ubuntu 24.04, podman 4.9, cgroup v2) has
not been run with these flags and the OOM workaround; nothing here is known to fail there.
Every test removes its containers and volumes on both sides; the module removes podman's
storage, its cgroup parent and its temp dir.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any

import pytest

from labkit.engine import ocispec
from labkit.engine.containers import Engine
from labkit.images import builtin
from labkit.images.base import export_layout
from labkit.images.store import Store

# The podman plumbing test_peers_drive_labkit.py uses (imported, as test_spec_fields imports test_vs_runc).
from test_peers_drive_labkit import ULIMITS, _remove_cgroup_parent, _unmount_below

pytestmark = pytest.mark.peer

CGROUP_PARENT = f"labkit-podman-{os.getpid()}"
PODMAN_IMAGE = "localhost/lkbusybox"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d) ", re.M)
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
STATE_KEYS = ("Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead", "Pid", "ExitCode", "Error",
              "StartedAt", "FinishedAt")


class Side:
    """One engine as its user drives it: the CLI, the image's name there, and the flags its
    `run`/`create` need on this machine."""

    def __init__(self, name: str, argv: list[str], image: str, create_flags: list[str],
                 init_flags: list[str], env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.image = name, argv, image
        self.create_flags, self.init_flags, self.env = create_flags, init_flags, env

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def __call__(self, *args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        if "input" not in kw:
            kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run([*self.argv, *args], timeout=timeout, env=self.env, **kw)

    def run(self, opts: list[str], *command: str, **kw: Any) -> subprocess.CompletedProcess:
        """`run OPTS IMAGE COMMAND…`; `--init` in OPTS becomes this side's init flags."""
        opts = [f for o in opts for f in (self.init_flags if o == "--init" else [o])]
        return self("run", *self.create_flags, *opts, self.image, *command, **kw)

    def create(self, opts: list[str], *command: str) -> str:
        r = self("create", *self.create_flags, *opts, self.image, *command)
        assert r.returncode == 0, (self, r.stderr)
        return r.stdout.strip().splitlines()[-1]

    def ok(self, *args: str) -> str:
        r = self(*args)
        assert r.returncode == 0, (self, args, r.stderr)
        return r.stdout

    def inspect(self, ref: str, fmt: str) -> str:
        return self.ok("inspect", "--format", fmt, ref).strip()

    def inspect_json(self, ref: str) -> dict[str, Any]:
        return json.loads(self.ok("inspect", ref))[0]

    def settled(self, ref: str, quiet: float = 2.0, timeout: float = 60) -> str:
        """Wait until the container is exited and its restart count has not moved for `quiet`
        seconds (a restart policy is done); '{{.State.Status}} {{.RestartCount}}' then."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            now = self.inspect(ref, "{{.State.Status}} {{.RestartCount}}")
            if now != last:
                last, since = now, time.monotonic()
            elif now.startswith("exited ") and time.monotonic() - since >= quiet:
                return now
            time.sleep(0.1)
        raise AssertionError(f"{self}: {ref} did not settle within {timeout} s: {last}")


def both(scenario, podman: Side, labkit: Side, *args: Any) -> tuple[Any, Any]:
    return scenario(podman, *args), scenario(labkit, *args)


# --- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def podman_side(engine_data_root):
    if not shutil.which("podman"):
        pytest.fail("podman is not installed: ./lab.sh setup installs it")
    # Short (conmon's socket paths must fit in 108 bytes) and lower case: podman names the pulled
    # image after the layout's path, and a reference allows no upper case.
    base = os.path.join(tempfile.gettempdir(), f"labkit-podman-{os.urandom(4).hex()}")
    os.mkdir(base, 0o700)
    argv = ["podman", "--root", f"{base}/storage", "--runroot", f"{base}/run", "--tmpdir", f"{base}/tmp",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"]
    side = Side("podman", argv, PODMAN_IMAGE,
                ["--network", "none", "--cgroup-parent", f"/{CGROUP_PARENT}", *ULIMITS],
                ["--init", "--init-path", ocispec.init_binary()])
    try:
        store = Store(os.path.join(engine_data_root, "images"))
        image = builtin.open_image_or_builtin(store, "busybox")
        layout = export_layout(image, os.path.join(base, "layout"), "busybox")
        pulled = side("pull", "-q", f"oci:{layout}:busybox")
        assert pulled.returncode == 0, pulled.stderr
        side.ok("tag", pulled.stdout.strip(), PODMAN_IMAGE)
        layers = json.loads(side.inspect(PODMAN_IMAGE, "{{json .RootFS.Layers}}"))
        assert layers == image.diff_ids  # the very same content on both sides
        yield side
    finally:
        side("rm", "--all", "--force", "--time", "0")
        side("system", "reset", "--force")
        _unmount_below(base)
        _remove_cgroup_parent(CGROUP_PARENT)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sides(podman_side, engine_data_root):
    env = dict(os.environ, LABKIT_DATA_ROOT=engine_data_root)
    labkit = Side("labkit", ["labkit"], "busybox", [], ["--init"], env)
    yield podman_side, labkit
    podman_side("rm", "--all", "--force", "--time", "0")
    podman_side("volume", "rm", "--all", "--force")
    Engine(engine_data_root).clear()
    assert podman_side.ok("ps", "-aq") == "" and podman_side.ok("volume", "ls", "-q") == ""


# --- exit codes ---------------------------------------------------------------------------------------------
def exit_codes(side: Side) -> dict[str, Any]:
    seen = {"exit 3": side.run(["--rm"], "sh", "-c", "exit 3").returncode,
            "not found": side.run(["--rm"], "/no/such/program").returncode,
            "not executable": side.run(["--rm"], "/etc/passwd").returncode}
    side.run(["-d", "--name", "killed"], "sleep", "300")
    side.ok("kill", "killed")
    seen["kill: wait"] = side.ok("wait", "killed").strip()
    seen["kill: inspect"] = side.inspect("killed", "{{.State.Status}} {{.State.ExitCode}}")
    side.run(["-d", "--init", "--name", "inited"], "sleep", "300")
    side.ok("stop", "-t", "20", "inited")  # tini passes TERM on to sleep: 128 + 15, no KILL
    seen["--init, stop"] = side.inspect("inited", "{{.State.Status}} {{.State.ExitCode}}")
    return seen


def test_exit_codes(sides):
    podman, labkit = both(exit_codes, *sides)
    assert labkit == podman
    assert labkit == {"exit 3": 3, "not found": 127, "not executable": 126, "kill: wait": "137",
                      "kill: inspect": "exited 137", "--init, stop": "exited 143"}


def failed_start(side: Side) -> dict[str, Any]:
    seen = {}
    for name, program in (("nosuch", "/no/such/program"), ("noexec", "/etc/passwd")):
        r = side.run(["--name", name], program)
        state = side.inspect_json(name)["State"]  # JSON: podman's --format prints times Go's way
        seen[name] = (r.returncode, state["Status"], state["StartedAt"])
        seen[f"{name} ExitCode"] = state["ExitCode"]
    return seen


def test_a_command_that_cannot_run_leaves_the_container_created(sides):
    podman, labkit = both(failed_start, *sides)
    never = "0001-01-01T00:00:00Z"  # it never ran: Go's zero time
    assert {k: labkit[k] for k in ("nosuch", "noexec")} == {k: podman[k] for k in ("nosuch", "noexec")} \
        == {"nosuch": (127, "created", never), "noexec": (126, "created", never)}
    codes = ("nosuch ExitCode", "noexec ExitCode")
    assert [podman[k] for k in codes] == [0, 0] and [labkit[k] for k in codes] == [127, 126]  # as Docker records


# --- lifecycle ------------------------------------------------------------------------------------------------
def lifecycle(side: Side) -> list[tuple[str, str]]:
    script = 'trap "exit 0" TERM; while :; do sleep 0.1; done'
    side.create(["--name", "life"], "sh", "-c", script)
    fmt = "{{.State.Status}} {{.State.Paused}} {{.State.ExitCode}}"
    seen = [("create", side.inspect("life", fmt))]
    for verb in ("start", "pause", "unpause", "stop"):
        r = side(verb, "life")
        assert (r.returncode, r.stdout.strip()) == (0, "life"), (side, verb, r.stderr)
        seen.append((verb, side.inspect("life", fmt)))
    side.ok("rm", "life")
    seen.append(("rm", "inspect fails" if side("inspect", "life").returncode else "still there"))
    return seen


def test_lifecycle_states(sides):
    podman, labkit = both(lifecycle, *sides)
    assert labkit == podman
    assert labkit == [("create", "created false 0"), ("start", "running false 0"), ("pause", "paused true 0"),
                      ("unpause", "running false 0"), ("stop", "exited false 0"), ("rm", "inspect fails")]


def running_while_paused(side: Side) -> str:
    side.run(["-d", "--name", "frozen"], "sleep", "300")
    side.ok("pause", "frozen")
    seen = side.inspect("frozen", "{{.State.Running}}")
    side.ok("unpause", "frozen")
    return seen


def test_state_running_of_a_paused_container_is_dockers_in_labkit(sides):
    podman, labkit = both(running_while_paused, *sides)
    assert (podman, labkit) == ("false", "true")  # podman's own choice; Docker says true, as labkit


# --- restart policy -----------------------------------------------------------------------------------------
def on_failure(side: Side) -> dict[str, Any]:
    side.run(["-d", "--name", "flaky", "--restart", "on-failure:2"], "sh", "-c", "echo try; exit 1")
    settled = side.settled("flaky")
    return {"settled": settled,
            "inspect": side.inspect("flaky", "{{.RestartCount}} {{.State.ExitCode}} {{.State.Status}}"),
            "tries": side.ok("logs", "flaky").count("try\n")}


def test_restart_on_failure(sides):
    podman, labkit = both(on_failure, *sides)
    assert labkit == podman
    assert labkit == {"settled": "exited 2", "inspect": "2 1 exited", "tries": 3}


# --- logs -------------------------------------------------------------------------------------------------------
def log_views(side: Side) -> dict[str, Any]:
    attached = side.run(["--name", "streams"], "sh", "-c", "echo out1; echo err1 >&2; echo out2")
    logs = side("logs", "streams")
    # sleeps: the two streams are two pipes, so only time orders lines across them
    side.run(["--name", "mixed"], "sh", "-c", "echo a; sleep 0.3; echo b >&2; sleep 0.3; echo c")
    side.run(["--name", "count"], "sh", "-c", "i=1; while [ $i -le 5 ]; do echo line-$i; i=$((i+1)); done")
    tail = side("logs", "--tail", "2", "mixed")
    stamped = side("logs", "-t", "streams")
    return {"run": (attached.returncode, attached.stdout, attached.stderr),
            "logs": (logs.stdout, logs.stderr),
            "--tail 2 (two streams)": (tail.stdout, tail.stderr),
            "--tail 2": side.ok("logs", "--tail", "2", "count"),
            "-t": (TIMESTAMP.sub("<time> ", stamped.stdout), TIMESTAMP.sub("<time> ", stamped.stderr))}


def test_logs_streams_tail_and_timestamps(sides):
    podman, labkit = both(log_views, *sides)
    assert labkit == podman
    assert labkit["logs"] == ("out1\nout2\n", "err1\n")
    assert labkit["--tail 2 (two streams)"] == ("c\n", "b\n") and labkit["--tail 2"] == "line-4\nline-5\n"
    assert labkit["-t"] == ("<time> out1\n<time> out2\n", "<time> err1\n")


# --- volumes ----------------------------------------------------------------------------------------------------
def named_volume(side: Side) -> dict[str, Any]:
    side.run(["--name", "writer", "-v", "notes:/data"], "sh", "-c", "echo kept > /data/file; echo lost > /tmp/file")
    side.ok("rm", "writer")
    reader = side.run(["--rm", "-v", "notes:/data"], "sh", "-c", "cat /data/file; cat /tmp/file")
    listed = "notes" in side.ok("volume", "ls", "-q").split()
    side.run(["-d", "--name", "user", "-v", "notes:/data"], "sleep", "300")
    busy = side("volume", "rm", "notes").returncode != 0
    side.ok("rm", "-f", "user")
    return {"reader": (reader.returncode, reader.stdout, reader.stderr), "listed": listed,
            "rm while used refused": busy, "rm": side("volume", "rm", "notes").returncode}


def test_named_volume_outlives_its_container(sides):
    podman, labkit = both(named_volume, *sides)
    assert labkit == podman
    assert labkit["reader"] == (1, "kept\n", "cat: can't open '/tmp/file': No such file or directory\n")


def read_only_bind(side: Side, host: str) -> tuple[int, str, str]:
    r = side.run(["--rm", "-v", f"{host}:/mnt:ro"], "sh", "-c", "cat /mnt/from-host; echo x > /mnt/nope")
    return r.returncode, r.stdout, r.stderr


def test_read_only_bind_mount(sides, tmp_path):
    (tmp_path / "from-host").write_text("hi\n")
    podman, labkit = both(read_only_bind, *sides, str(tmp_path))
    assert labkit == podman
    assert labkit[1:] == ("hi\n", "sh: can't create /mnt/nope: Read-only file system\n")
    assert sorted(os.listdir(tmp_path)) == ["from-host"]


def copy_up(side: Side) -> dict[str, Any]:
    first = side.run(["--rm", "-v", "etc-copy:/etc"], "cat", "/etc/passwd")
    again = side.run(["--rm", "-v", "etc-copy:/mnt"], "sh", "-c", "cat /mnt/passwd /mnt/group /mnt/os-release")
    listing = side.run(["--rm", "-v", "etc-copy:/mnt"], "ls", "/mnt").stdout.split()
    return {"first": (first.returncode, first.stdout), "again": (again.returncode, again.stdout),
            "files": listing}


def test_copy_up_fills_a_new_volume_from_the_image(sides):
    podman, labkit = both(copy_up, *sides)
    assert {k: labkit[k] for k in ("first", "again")} == {k: podman[k] for k in ("first", "again")}
    assert labkit["first"][1].startswith("root:x:0:0:")
    image_etc = ["group", "os-release", "passwd"]
    assert labkit["files"] == image_etc  # the image's /etc, nothing else
    assert set(podman["files"]) - set(image_etc) == {"hostname", "hosts", "mtab"}  # podman's mount points


# --- inspect ------------------------------------------------------------------------------------------------------
def stopped(side: Side, host: str) -> dict[str, Any]:
    r = side.run(["--name", "done", "-v", "data:/data", "-v", f"{host}:/mnt:ro"], "sh", "-c", "echo hi > /data/f")
    assert r.returncode == 0, (side, r.stderr)
    return side.inspect_json("done")


def test_inspect_state_restart_count_and_mounts(sides, tmp_path):
    podman, labkit = both(stopped, *sides, str(tmp_path))
    p_state, l_state = podman["State"], labkit["State"]
    assert set(STATE_KEYS) <= set(p_state) and set(l_state) == set(STATE_KEYS)  # podman has more: Health, …
    assert {k: type(l_state[k]) for k in STATE_KEYS} == {k: type(p_state[k]) for k in STATE_KEYS}
    times = ("StartedAt", "FinishedAt")
    assert {k: l_state[k] for k in STATE_KEYS if k not in times} == {k: p_state[k] for k in STATE_KEYS
                                                                      if k not in times}
    assert l_state["Status"] == "exited" and l_state["ExitCode"] == 0 and l_state["Pid"] == 0
    for state in (p_state, l_state):
        assert all(RFC3339.match(state[k]) for k in times), state
    # Only labkit's order is asserted: podman stamps StartedAt after start returns, so for a
    # command as short as this one its StartedAt can come after its FinishedAt (seen here by 2 ms).
    assert l_state["StartedAt"] <= l_state["FinishedAt"], l_state
    assert (type(labkit["RestartCount"]), labkit["RestartCount"]) == (type(podman["RestartCount"]),
                                                                     podman["RestartCount"]) == (int, 0)

    def view(mounts):
        return sorted((m["Type"], m.get("Name", ""), m["Destination"], m["RW"]) for m in mounts)

    assert view(labkit["Mounts"]) == view(podman["Mounts"]) == [("bind", "", "/mnt", False),
                                                                 ("volume", "data", "/data", True)]
    for side in (podman, labkit):
        by_dest = {m["Destination"]: m for m in side["Mounts"]}
        assert by_dest["/mnt"]["Source"] == str(tmp_path)
        with open(os.path.join(by_dest["/data"]["Source"], "f")) as f:  # the volume's directory on the host
            assert f.read() == "hi\n"
        assert by_dest["/data"]["Driver"] == "local"
    for lm in labkit["Mounts"]:  # labkit's keys are a subset of podman's (podman adds Options, …)
        pm = next(m for m in podman["Mounts"] if m["Destination"] == lm["Destination"])
        assert set(lm) <= set(pm), (lm, pm)
    modes = {side: {m["Destination"]: m["Mode"] for m in j["Mounts"]} for side, j in (("podman", podman),
                                                                                        ("labkit", labkit))}
    assert modes == {"podman": {"/mnt": "", "/data": ""}, "labkit": {"/mnt": "ro", "/data": ""}}  # Docker: "ro"


# --- OOM ------------------------------------------------------------------------------------------------------
HOG = ["sh", "-c", "head -c 64m /dev/zero | tail > /dev/null"]  # tail keeps the one 64 MB "line"
LIMITS = ["-m", "16m", "--memory-swap", "16m"]


def test_oom_killed(sides):
    podman, labkit = sides
    cid = podman.create(["--name", "hog", *LIMITS], *HOG)
    static_dir = podman.inspect(cid, "{{.StaticDir}}")  # conmon's oom marker must land there (see top)
    p_run = podman("start", "-a", "hog", cwd=static_dir)
    l_run = labkit.run(["--name", "hog", *LIMITS], *HOG)
    fmt = "{{.State.OOMKilled}} {{.State.ExitCode}}"
    seen = {"podman": (p_run.returncode, podman.inspect("hog", fmt)),
            "labkit": (l_run.returncode, labkit.inspect("hog", fmt))}
    assert seen["labkit"] == seen["podman"] == (137, "true 137"), seen
