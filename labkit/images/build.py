"""Build an image from a Containerfile: one layer per filesystem step, with a build cache.

    FROM     start from an image in the store (or `scratch`; `busybox` is built
             offline from the host's busybox-static when the store lacks it)
    RUN      run in a labkit container over the overlay of the layers so far;
             the container's upper dir — exactly what the command changed —
             becomes the new layer
    COPY     files from the build context, staged and written as a layer
    others   change only the config (ENV, WORKDIR, USER, CMD, ENTRYPOINT,
             LABEL, EXPOSE, ARG, VOLUME) and add a history entry

The cache: every step has a key chained from the previous step's key, its
instruction text and — for COPY — a digest of the copied content (names,
modes, bytes; not mtimes), for RUN the ARG values in scope. A key already
seen maps to its layer, so an unchanged rebuild runs nothing; changing a
step misses the cache from there on (why layer order matters).

Reproducible: layers get a fixed mtime and the config and history a fixed
`created`, so the same inputs give the same image digest.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tempfile
import time
from typing import Any, Callable

from ..errors import LabkitError
from . import changes as ch
from . import containerfile as cf
from . import builtin, overlay, runspec
from .base import EPOCH, new_config
from .bundle import image_file_reader
from .image import Image, history_entry, write_image
from .layerdirs import LayerDirs, lookup
from .layers import Layer, create_layer
from .model import Descriptor, ImageConfig, RunConfig
from .store import Store, canonical_json

RUN_MOUNTPOINTS = ("proc", "sys", "dev")  # made by the runtime, not by the command
DEFAULT_FILES = ("Containerfile", "Dockerfile")


class BuildError(LabkitError):
    """A build step failed."""


@dataclasses.dataclass
class Step:
    instruction: str
    cached: bool = False
    layer: str | None = None   # diff_id of the layer it made
    seconds: float = 0.0
    output: str = ""

    def __str__(self) -> str:
        how = "CACHED" if self.cached else f"{self.seconds:.2f}s"
        layer = f"  -> layer {self.layer[7:19]}" if self.layer else ""
        return f"[{how:>6}] {self.instruction}{layer}"


@dataclasses.dataclass
class BuildResult:
    image: Image
    steps: list[Step]

    @property
    def cache_hits(self) -> int:
        return sum(s.cached for s in self.steps)

    def __repr__(self) -> str:
        lines = [str(s) for s in self.steps]
        lines.append(f"=> {self.image.ref} {self.image.digest}")
        return "\n".join(lines)


class BuildCache:
    """cache key -> the layer a step made (files under <dir>/<key hex>.json)."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def get(self, key: str, store: Store) -> Layer | None:
        try:
            with open(os.path.join(self.dir, key + ".json")) as f:
                layer = Layer(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None
        return layer if store.has_blob(layer.digest) else None  # blob gone (gc): a miss

    def put(self, key: str, layer: Layer) -> None:
        tmp = os.path.join(self.dir, f".{key}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(dataclasses.asdict(layer), f)
        os.replace(tmp, os.path.join(self.dir, key + ".json"))

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir, exist_ok=True)


def chain(previous: str, *parts: Any) -> str:
    return hashlib.sha256(canonical_json([previous, *parts])).hexdigest()


@dataclasses.dataclass
class _State:
    config: ImageConfig
    layers: list[Descriptor]
    key: str
    args: dict[str, str]  # ARG values in scope


class Builder:
    def __init__(self, store: Store, context: str, layers: LayerDirs, cache: BuildCache | None,
                 build_args: dict[str, str], created: str, mtime: int, timeout: float) -> None:
        self.store, self.context, self.layer_dirs, self.cache = store, os.path.abspath(context), layers, cache
        self.build_args, self.created, self.mtime, self.timeout = build_args, created, mtime, timeout
        self.work = os.path.join(os.path.dirname(os.path.abspath(store.root)), "build")
        os.makedirs(self.work, exist_ok=True)

    # --- the steps ---
    def run(self, instructions: list[cf.Instruction]) -> tuple[_State, list[Step]]:
        global_args: dict[str, str] = {}
        state: _State | None = None
        steps = []
        for instr in instructions:
            began = time.monotonic()
            if state is None and instr.cmd == "ARG":
                global_args.update(self._arg_value(instr, global_args))
                steps.append(Step(str(instr), seconds=time.monotonic() - began))
                continue
            if instr.cmd == "FROM":
                if state is not None:
                    raise BuildError(f"line {instr.line}: a second FROM (multi-stage builds) is not in the subset",
                                     "build each stage as its own image and COPY between contexts")
                state = self._from(instr, global_args)
                steps.append(Step(str(instr), seconds=time.monotonic() - began))
                continue
            assert state is not None
            step = Step(str(instr))
            handler = {"RUN": self._run, "COPY": self._copy, "ENV": self._env, "WORKDIR": self._workdir,
                       "USER": self._user, "CMD": self._cmd, "ENTRYPOINT": self._entrypoint,
                       "LABEL": self._label, "EXPOSE": self._expose, "ARG": self._arg_step,
                       "VOLUME": self._volume}[instr.cmd]
            handler(state, instr, step, global_args)
            step.seconds = time.monotonic() - began
            steps.append(step)
        assert state is not None
        return state, steps

    def _arg_value(self, instr: cf.Instruction, scope: dict[str, str]) -> dict[str, str]:
        name, eq, default = cf.expand(instr.args, scope).partition("=")
        name = name.strip()
        value = self.build_args.get(name, default if eq else scope.get(name, ""))
        return {name: value}

    def _from(self, instr: cf.Instruction, global_args: dict[str, str]) -> _State:
        ref = cf.expand(instr.args, global_args).split()[0]
        if ref == "scratch":
            return _State(new_config(RunConfig(), self.created), [], chain("scratch"), {})
        image = builtin.open_image_or_builtin(self.store, ref, instr.flag("platform"))  # busybox: offline
        config = ImageConfig.from_dict(json.loads(json.dumps(image.config.to_dict())))  # a deep copy
        config.history = list(config.history or [])
        return _State(config, list(image.layers), chain(image.digest), {})

    def _history(self, state: _State, instr: cf.Instruction, empty: bool) -> None:
        state.config.history = [*(state.config.history or []), history_entry(str(instr), self.created, empty)]

    def _config_step(self, state: _State, instr: cf.Instruction, *parts: Any) -> None:
        state.key = chain(state.key, str(instr), *parts)
        self._history(state, instr, empty=True)

    def _variables(self, state: _State) -> dict[str, str]:
        env = dict(e.split("=", 1) for e in (state.config.config.env or []) if "=" in e)
        return {**state.args, **env}

    # ARG after FROM: in scope for expansion and as RUN environment, not stored in the image
    def _arg_step(self, state: _State, instr: cf.Instruction, step: Step, global_args: dict[str, str]) -> None:
        found = self._arg_value(instr, {**global_args, **state.args})
        state.args.update(found)
        self._config_step(state, instr, found)

    def _env(self, state: _State, instr: cf.Instruction, step: Step, _g: dict[str, str]) -> None:
        pairs = cf.key_values(instr.args, "ENV")
        env = dict(e.split("=", 1) for e in (state.config.config.env or []) if "=" in e)
        for key, value in pairs:
            env[key] = cf.expand(value, {**state.args, **env})
        state.config.config.env = [f"{k}={v}" for k, v in env.items()]
        self._config_step(state, instr)

    def _workdir(self, state: _State, instr: cf.Instruction, step: Step, _g: dict[str, str]) -> None:
        path = cf.expand(instr.args, self._variables(state))
        state.config.config.working_dir = posixpath.normpath(posixpath.join(state.config.config.working_dir or "/", path))
        self._config_step(state, instr)

    def _user(self, state: _State, instr: cf.Instruction, step: Step, _g: dict[str, str]) -> None:
        state.config.config.user = cf.expand(instr.args, self._variables(state)).strip()
        self._config_step(state, instr)

    def _cmd(self, state: _State, instr: cf.Instruction, step: Step, _g: dict[str, str]) -> None:
        state.config.config.cmd = instr.argv()
        self._config_step(state, instr)

    def _entrypoint(self, state: _State, instr: cf.Instruction, step: Step, _g: dict[str, str]) -> None:
        state.config.config.entrypoint = instr.argv()
        state.config.config.cmd = None  # as Docker: a new ENTRYPOINT drops the inherited CMD
        self._config_step(state, instr)

    def _label(self, state: _State, instr: cf.Instruction, step: Step, _g: dict[str, str]) -> None:
        labels = dict(state.config.config.labels or {})
        for key, value in cf.key_values(instr.args, "LABEL"):
            labels[cf.expand(key, self._variables(state))] = cf.expand(value, self._variables(state))
        state.config.config.labels = labels
        self._config_step(state, instr)

    def _expose(self, state: _State, instr: cf.Instruction, step: Step, _g: dict[str, str]) -> None:
        ports = dict(state.config.config.exposed_ports or {})
        for port in cf.exposed(cf.expand(instr.args, self._variables(state))):
            ports[port] = {}
        state.config.config.exposed_ports = ports
        self._config_step(state, instr)

    def _volume(self, state: _State, instr: cf.Instruction, step: Step, _g: dict[str, str]) -> None:
        """VOLUME: mount points the engine gives an anonymous volume (filled from the image)."""
        volumes = dict(state.config.config.volumes or {})
        for path in cf.volumes(instr, self._variables(state)):
            volumes[path] = {}
        state.config.config.volumes = volumes
        self._config_step(state, instr)

    # --- filesystem steps ---
    def _add_layer(self, state: _State, instr: cf.Instruction, step: Step, key: str,
                   make: Callable[[], Layer]) -> None:
        layer = self.cache.get(key, self.store) if self.cache else None
        step.cached = layer is not None
        if layer is None:
            layer = make()
            if self.cache:
                self.cache.put(key, layer)
        state.layers.append(layer.descriptor())
        state.config.rootfs["diff_ids"] = [*state.config.diff_ids, layer.diff_id]
        state.key = key
        step.layer = layer.diff_id
        self._history(state, instr, empty=False)

    def _lowers(self, state: _State) -> list[str]:
        return self.layer_dirs.ensure_all(self.store, state.layers, state.config.diff_ids)

    def _run(self, state: _State, instr: cf.Instruction, step: Step, _g: dict[str, str]) -> None:
        key = chain(state.key, str(instr), sorted(state.args.items()))
        overlay.check_depth(len(state.layers) + 1)
        self._add_layer(state, instr, step, key, lambda: self._execute(state, instr, step))

    def _execute(self, state: _State, instr: cf.Instruction, step: Step) -> Layer:
        from .. import runtime  # the runtime starts the container; images only prepare it

        lowers = self._lowers(state)
        bundle = tempfile.mkdtemp(prefix="step-", dir=self.work)
        try:
            os.chmod(bundle, 0o755)
            ov = overlay.prepare(os.path.join(bundle, "overlay"), lowers)
            os.mkdir(os.path.join(bundle, "rootfs"))
            arg_env = [f"{k}={v}" for k, v in state.args.items()]
            env = dict(e.split("=", 1) for e in arg_env + (state.config.config.env or []))  # ENV beats ARG
            spec = runspec.to_spec(state.config, image_file_reader(list(reversed(lowers))), args=instr.argv(),
                                   entrypoint=[], env=[f"{k}={v}" for k, v in env.items()], hostname="labkit-build")
            spec.annotations = {**(spec.annotations or {}), **ov.annotation()}
            spec.save(bundle)
            result = runtime.run(bundle, timeout=self.timeout)
            step.output = (result.stdout or "") + (result.stderr or "")
            if result.exit_code != 0:
                raise BuildError(f"line {instr.line}: {instr} exited with code {result.exit_code}",
                                 "its output: " + (step.output.strip()[-2000:] or "(none)"))
            found = [c for c in ch.upper_changes(ov.upper) if not self._runtime_artifact(c, ov.upper, lowers)]
            return create_layer(self.store, found, ov.upper, mtime=self.mtime)
        finally:
            shutil.rmtree(bundle, ignore_errors=True)

    @staticmethod
    def _runtime_artifact(change: ch.Change, upper: str, lowers: list[str]) -> bool:
        """Empty mount points the runtime created (e.g. /proc in a scratch image) are not the command's."""
        path = os.path.join(upper, change.path)
        return (change.path in RUN_MOUNTPOINTS and os.path.isdir(path) and not os.listdir(path)
                and lookup(list(reversed(lowers)), change.path) is None)

    def _copy(self, state: _State, instr: cf.Instruction, step: Step, _g: dict[str, str]) -> None:
        sources, dest = cf.copy_args(instr, self._variables(state))
        paths = self._sources(sources, instr)
        owner = self._owner(state, instr)
        dest = posixpath.normpath(posixpath.join(state.config.config.working_dir or "/", dest)) + \
            ("/" if dest.endswith("/") else "")
        key = chain(state.key, str(instr), content_digest(self.context, paths), dest, owner)
        mode = _chmod_flag(instr)
        self._add_layer(state, instr, step, key, lambda: self._stage(state, paths, dest, owner, mode))

    def _sources(self, sources: list[str], instr: cf.Instruction) -> list[str]:
        """Context-relative source paths (globs expanded); nothing outside the context."""
        found = []
        for src in sources:
            rel = posixpath.normpath(src.lstrip("/"))
            if rel == ".." or rel.startswith("../"):
                raise BuildError(f"line {instr.line}: COPY source {src!r} is outside the build context",
                                 "only files below the context directory can be copied")
            matches = sorted(_glob(self.context, rel)) if any(c in rel for c in "*?[") else [rel]
            for m in matches:
                real = os.path.realpath(os.path.join(self.context, m))
                if real != self.context and not real.startswith(self.context + os.sep):
                    raise BuildError(f"line {instr.line}: COPY source {src!r} resolves outside the build context",
                                     "a symlink in the context points outside it")
                if not os.path.lexists(os.path.join(self.context, m)):
                    raise BuildError(f"line {instr.line}: COPY source {src!r} not found in the build context",
                                     f"context: {self.context}")
                found.append(m)
        if not found:
            raise BuildError(f"line {instr.line}: COPY {sources} matched no files", f"context: {self.context}")
        return found

    def _owner(self, state: _State, instr: cf.Instruction) -> tuple[int, int]:
        chown = instr.flag("chown")
        if not chown:
            return (0, 0)
        if all(p.isdigit() for p in chown.split(":")):
            uid, _, gid = chown.partition(":")
            return (int(uid), int(gid or uid))
        read = image_file_reader(list(reversed(self._lowers(state))))
        user = runspec.resolve_user(chown, read("/etc/passwd"), read("/etc/group"))
        return (user.uid, user.gid)

    def _stage(self, state: _State, paths: list[str], dest: str, owner: tuple[int, int],
               mode: int | None) -> Layer:
        staging = tempfile.mkdtemp(prefix="copy-", dir=self.work)
        try:
            lowers_top = list(reversed(self._lowers(state))) if state.layers else []
            target = staging + dest.rstrip("/") if dest.rstrip("/") else staging
            into_dir = dest.endswith("/") or len(paths) > 1 or (
                bool(lowers_top) and _is_dir(lookup(lowers_top, dest)))
            for rel in paths:
                src = os.path.join(self.context, rel)
                if os.path.isdir(src) and not os.path.islink(src):
                    shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
                else:
                    out = os.path.join(target, os.path.basename(rel)) if into_dir else target
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    shutil.copy2(src, out, follow_symlinks=False)
            if mode is not None:  # COPY --chmod: every copied file and directory
                for dirpath, dirnames, filenames in os.walk(target):
                    for name in ["", *dirnames, *filenames]:
                        path = os.path.join(dirpath, name) if name else dirpath
                        if not os.path.islink(path):
                            os.chmod(path, mode)
            # Directories on the way to dest that the image has keep its mode and owner in the
            # layer, as a RUN's copied-up directories do (and the overlay view shows the same).
            kept: dict[str, tuple[int, int]] = {}
            for rel in _dest_path_dirs(dest):
                lower = lookup(lowers_top, rel) if lowers_top else None
                if _is_dir(lower) and os.path.isdir(os.path.join(staging, rel)):
                    st = os.lstat(lower)  # type: ignore[arg-type]
                    os.chmod(os.path.join(staging, rel), stat.S_IMODE(st.st_mode))
                    kept[rel] = (st.st_uid, st.st_gid)
            return create_layer(self.store, ch.diff_trees(None, staging), staging, mtime=self.mtime,
                                owner=lambda rel: kept.get(rel, owner))
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _is_dir(path: str | None) -> bool:
    return path is not None and os.path.isdir(path) and not os.path.islink(path)


def _chmod_flag(instr: cf.Instruction) -> int | None:
    value = instr.flag("chmod")
    if value is None:
        return None
    try:
        return int(value, 8) & 0o7777
    except ValueError:
        raise BuildError(f"line {instr.line}: COPY --chmod={value} is not an octal mode",
                         "write it like --chmod=755") from None


def _dest_path_dirs(dest: str) -> list[str]:
    """'/a/b/c/' -> ['a', 'a/b', 'a/b/c']: the destination and the directories above it."""
    parts = [p for p in dest.split("/") if p]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _glob(context: str, pattern: str) -> list[str]:
    directory, _, name_pattern = pattern.rpartition("/")
    base = os.path.join(context, directory)
    if not os.path.isdir(base):
        return []
    return [posixpath.join(directory, n) if directory else n
            for n in os.listdir(base) if fnmatch.fnmatch(n, name_pattern)]


def content_digest(context: str, paths: list[str]) -> str:
    """What COPY's cache key sees: names, types, modes and bytes — not mtimes or owners."""
    h = hashlib.sha256()
    for rel in paths:
        top = os.path.join(context, rel)
        entries = [(rel, top)]
        if os.path.isdir(top) and not os.path.islink(top):
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                for name in sorted(dirnames + filenames):
                    full = os.path.join(dirpath, name)
                    entries.append((os.path.relpath(full, context), full))
        for name, full in entries:
            st = os.lstat(full)
            h.update(f"{name}\0{st.st_mode:o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(full).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
    return "sha256:" + h.hexdigest()


def build(context: str, store: Store, tag: str | None = None, containerfile: str | None = None,
          build_args: dict[str, str] | None = None, use_cache: bool = True, layers: LayerDirs | None = None,
          cache_dir: str | None = None, created: str = EPOCH, mtime: int = 0, timeout: float = 600) -> BuildResult:
    """Build the Containerfile in `context` into `store`; RUN steps need root (they run containers).

    Unpacked layers and the cache live beside the store (<data root>/layers,
    <data root>/build-cache) unless given.
    """
    data_root = os.path.dirname(os.path.abspath(store.root))
    path = containerfile or next((os.path.join(context, n) for n in DEFAULT_FILES
                                  if os.path.exists(os.path.join(context, n))), None)
    if path is None or not os.path.exists(path):
        raise BuildError(f"no Containerfile or Dockerfile in {context}", "write one, or pass containerfile=PATH")
    with open(path) as f:
        instructions = cf.parse(f.read())
    cache = BuildCache(cache_dir or os.path.join(data_root, "build-cache")) if use_cache else None
    builder = Builder(store, context, layers or LayerDirs(os.path.join(data_root, "layers")), cache,
                      dict(build_args or {}), created, mtime, timeout)
    state, steps = builder.run(instructions)
    state.config.created = created
    image = write_image(store, state.config, state.layers, tag)
    return BuildResult(image, steps)
