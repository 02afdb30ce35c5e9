"""labkit.check.ch07 on real containers and volumes: the reference answers pass, each usual mistake
gets its own hint, hints come in tiers, and every check leaves no container or volume behind."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from labkit.check import ch07
from labkit.engine.containers import Engine

# Host only: chapter 07's notebook runs these checks with the reference answers on cgroup v2 in the
# VM; the wrong answers' hints are the same logic on any kernel (and cost the emulated VM minutes).


@pytest.fixture(autouse=True)
def engine_env(engine_data_root, monkeypatch):
    """The checks run `labkit` in subprocesses: they inherit this data root; hints start at the nudge."""
    monkeypatch.setenv("LABKIT_DATA_ROOT", engine_data_root)
    ch07.HINTS.reset()
    yield
    left = Engine(engine_data_root).clear()
    assert left == ([], []), f"the check left containers/volumes behind: {left}"


# --- exercise 1: where do the bytes live? -----------------------------------------------------------
def _inspect(container):
    out = subprocess.run(["labkit", "inspect", container], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


def _upper(info, path):
    upper = os.path.join(os.environ["LABKIT_DATA_ROOT"], "containers", info["Id"], "bundle", "overlay", "upper")
    return os.path.join(upper, path.lstrip("/"))


def reference(container, path):
    info = _inspect(container)
    holding = [m for m in info["Mounts"]
               if path == m["Destination"] or path.startswith(m["Destination"].rstrip("/") + "/")]
    if holding:
        mount = max(holding, key=lambda m: len(m["Destination"]))
        return os.path.join(mount["Source"], os.path.relpath(path, mount["Destination"]))
    return _upper(info, path)


def first_match(container, path):
    """Takes the first mount that contains the path: misses the nested one."""
    info = _inspect(container)
    for m in info["Mounts"]:
        if path == m["Destination"] or path.startswith(m["Destination"] + "/"):
            return os.path.join(m["Source"], os.path.relpath(path, m["Destination"]))
    return _upper(info, path)


def string_prefix(container, path):
    """Longest mount by a plain string prefix: '/database' is taken for a path inside '/data'."""
    info = _inspect(container)
    holding = [m for m in info["Mounts"] if path.startswith(m["Destination"])]
    if holding:
        mount = max(holding, key=lambda m: len(m["Destination"]))
        return mount["Source"] + path[len(mount["Destination"]):]
    return _upper(info, path)


def mounts_only(container, path):
    """Knows mounts, but not the writable layer."""
    info = _inspect(container)
    for m in sorted(info["Mounts"], key=lambda m: -len(m["Destination"])):
        if path == m["Destination"] or path.startswith(m["Destination"] + "/"):
            return os.path.join(m["Source"], os.path.relpath(path, m["Destination"]))
    return path


def through_proc(container, path):
    """The container's view through its process: right content, wrong answer."""
    return f"/proc/{_inspect(container)['State']['Pid']}/root{path}"


def test_where_reference_passes():
    verdict = ch07.where_it_lives(reference)
    assert verdict, verdict
    assert "/data/cache" in verdict.message and "writable layer" in verdict.message


def test_where_hints_come_in_tiers_without_repeating():
    hints = [ch07.where_it_lives(lambda container, path: path) for _ in range(4)]
    assert not any(hints)
    assert all("returned '/data/notes/today.txt': there is no such file on the host" in v.message for v in hints)
    assert [v.hint.split("]")[0] for v in hints] == ["[nudge", "[pointer", "[answer", "[answer"]
    assert "named volume" in hints[0].hint and "labkit inspect" in hints[1].hint and "relpath" in hints[2].hint
    assert "check again" in hints[0].hint and "check again" not in hints[2].hint


def test_where_tiers_are_counted_per_mistake():
    assert "[nudge]" in ch07.where_it_lives(lambda container, path: path).hint
    verdict = ch07.where_it_lives(mounts_only)  # a different mistake starts at its own nudge
    assert not verdict and "'/tmp/ch07-scratch.txt'" in verdict.message
    assert verdict.hint.startswith("[nudge] no volume or bind mount covers /tmp")


@pytest.mark.parametrize("answer, path, hint", [
    (first_match, "/data/cache/blob.bin", "/data/cache is a mount of its own"),
    (string_prefix, "/database/rows.txt", "/database is not inside /data"),
])
def test_where_mount_mistakes_get_specific_hints(answer, path, hint):
    verdict = ch07.where_it_lives(answer)
    assert not verdict and repr(path) in verdict.message and hint in verdict.hint, verdict


def test_where_refuses_the_view_through_proc():
    verdict = ch07.where_it_lives(through_proc)
    assert not verdict and "through a process's view" in verdict.message and "/proc/PID/root" in verdict.hint


@pytest.mark.parametrize("answer, words", [
    (lambda container, path: None, "returned None, not a path"),
    (lambda container, path: 1 / 0, "raised ZeroDivisionError"),
])
def test_where_learner_errors_are_reported(answer, words):
    verdict = ch07.where_it_lives(answer)
    assert not verdict and words in verdict.message


# --- exercise 2: back up a volume --------------------------------------------------------------------
TAR = ("tar", "cf", "/backup/backup.tar", "-C", "/data", ".")


def backup(volume, backup_dir, mode=":ro", rm=("--rm",), script=None, tar=TAR):
    words = ["run", *rm, "-v", f"{volume}:/data{mode}", "-v", f"{backup_dir}:/backup", "busybox"]
    return words + (["sh", "-c", script] if script else list(tar))


def test_backup_reference_passes():
    verdict = ch07.backup_volume(backup)
    assert verdict, verdict
    assert ".secret too" in verdict.message and "read-only" in verdict.message


def test_backup_as_one_string_with_labkit_in_front_passes():
    verdict = ch07.backup_volume(lambda v, d: f"labkit run --rm -v {v}:/data:ro -v {d}:/backup busybox "
                                              "tar cf /backup/backup.tar -C /data .")
    assert verdict, verdict


def test_backup_with_mount_syntax_passes():
    verdict = ch07.backup_volume(lambda v, d: ["run", "--rm", "--mount", f"type=volume,src={v},dst=/data,ro",
                                               "--mount", f"type=bind,src={d},dst=/backup", "busybox",
                                               "tar", "cf", "/backup/backup.tar", "-C", "/data", "."])
    assert verdict, verdict


@pytest.mark.parametrize("command, message, hint", [
    (lambda v, d: ["run", "--rm", "busybox", "true"], "does not mount the volume", "mount the volume into it"),
    (lambda v, d: backup(v, d, mode=""), "mounted read-write", "only reads the volume"),
    (lambda v, d: ["run", "--rm", "-v", f"{v}:/data:ro", "busybox", "tar", "cf", "/backup.tar", "-C", "/data", "."],
     "backup_dir is not mounted", "end up on the host"),
    (lambda v, d: backup(v, d, rm=()), "would stay behind", "of no use"),
    (lambda v, d: backup(v, d, tar=("tar", "cf", "/backup/b.tar", "-C", "/data", ".")),
     "backup_dir holds b.tar, not backup.tar", "nothing named backup.tar"),
    (lambda v, d: backup(v, d, script="cd /data && tar cf /backup/backup.tar *"),
     "every file of the volume but .secret", "starts with a dot"),
    (lambda v, d: backup(v, d, tar=("tar", "cf", "/backup/backup.tar", "/data")),
     "the tar holds data/notes.txt", "one level too deep"),
])
def test_backup_mistakes_get_tiered_hints(command, message, hint):
    verdict = ch07.backup_volume(command)
    assert not verdict and message in verdict.message, verdict
    assert verdict.hint.startswith("[nudge]") and hint in verdict.hint, verdict


def test_backup_answer_tier_gives_a_command_that_passes():
    for _ in range(3):
        verdict = ch07.backup_volume(lambda v, d: ["run", "--rm", "busybox", "true"])
    assert verdict.hint.startswith("[answer]") and ", ".join(map(repr, TAR)) in verdict.hint


@pytest.mark.parametrize("command, message", [
    (lambda v, d: None, "returned None, not the words of a command"),
    (lambda v, d: ["run", "--rmm", "busybox"], "labkit would refuse"),
    (lambda v, d: ["run", "--rm", "-v", f"{v}:/data:rx", "busybox"], "invalid mode: rx"),
    (lambda v, d: ["volume", "inspect", v], "the command is `labkit volume …`"),
    (lambda v, d: backup(v, d) + ["--nonsense"], "exited with status"),
    (lambda v, d: ["run", "--rm", "-v", f"{v}:/data:ro", "-v", f"{d}:/backup:ro", "busybox", "true"],
     "backup_dir is mounted read-only"),
])
def test_backup_command_errors_are_reported(command, message):
    verdict = ch07.backup_volume(command)
    assert not verdict and message in verdict.message, verdict


def test_backup_of_a_detached_container_is_refused():
    verdict = ch07.backup_volume(lambda v, d: ["run", "-d", *backup(v, d)[1:]])
    assert not verdict and "-d" in verdict.message
