"""A container record -> an OCI bundle: what moby's createSpec does before calling runc.

The image gives the defaults (labkit.images.runspec: Entrypoint + Cmd, Env,
WorkingDir, User); the record's options are then applied one small function
each, in moby's order: the process, Docker's security defaults, mounts,
resources, --init. Docker's run-time defaults live here, not in the images
package: its 14 capabilities (set by runspec for image containers), its masked
and read-only /proc and /sys paths, and the container's short id as hostname.

    <container dir>/bundle/config.json   generated at create, never edited by hand
    <container dir>/bundle/rootfs        the overlay is mounted here inside the container
    <container dir>/bundle/overlay/      upper/ (the writable layer) and work/
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Callable

from .. import capabilities
from ..errors import LabkitError
from ..images.bundle import Bundle, create_bundle
from ..images.image import Image
from ..runtime.spec import Mount as OciMount
from ..runtime.spec import Spec
from . import defaults, mounts
from .errors import Invalid
from .names import short_id
from .records import ContainerConfig

CPU_PERIOD = 100_000  # µs: Docker's --cpus is a quota over this period
INIT_PATH = "/sbin/docker-init"  # where Docker puts its init (tini) in the container
INIT_BINARIES = ("/usr/bin/tini-static", "/usr/bin/docker-init", "/usr/bin/tini")
VolumePath = Callable[[str], str]  # volume name -> its directory on the host


def write_bundle(path: str, image: Image, cid: str, config: ContainerConfig,
                 oci_mounts: list[OciMount], init_files: list[str] = ()) -> Bundle:
    """The container's bundle at `path`, from its image and its record's config; `init_files`
    are the mount points of files the engine binds in (/etc/hosts…), made in an init layer."""
    run = image.config.config
    image_config = dataclasses.replace(image.config, config=dataclasses.replace(
        run, user=config.user or run.user, working_dir=config.working_dir or run.working_dir))
    image = dataclasses.replace(image, config=image_config)

    def edit(spec: Spec) -> None:
        for option in (with_process(config), with_docker_defaults(), with_capabilities(config),
                       with_mounts(oci_mounts), with_root_propagation(config), with_resources(config),
                       with_init(config), with_network(config)):
            option(spec)
        spec.annotations = {**(spec.annotations or {}), **dict(config.labels)}

    return create_bundle(image, path, args=list(config.command) or None,
                         entrypoint=None if config.entrypoint is None else list(config.entrypoint),
                         env=list(config.env), hostname=config.hostname or short_id(cid), edit=edit,
                         init_files=init_files)


SpecOption = Callable[[Spec], None]


def with_process(config: ContainerConfig) -> SpecOption:
    def apply(spec: Spec) -> None:
        assert spec.process is not None and spec.root is not None
        spec.process.terminal = config.tty
        spec.root.readonly = config.read_only
        if config.tty and not any(e.startswith("TERM=") for e in spec.process.env):
            spec.process.env.append("TERM=xterm")  # as docker run -t
    return apply


def with_docker_defaults() -> SpecOption:
    return defaults.apply


def with_capabilities(config: ContainerConfig) -> SpecOption:
    """--cap-add/--cap-drop on Docker's 14, --privileged for all (root keeps them; another
    user has them only as a bound, as runspec set)."""
    def apply(spec: Spec) -> None:
        if not (config.cap_add or config.cap_drop or config.privileged):
            return
        assert spec.process is not None
        try:
            kept = capabilities.adjusted(capabilities.DOCKER_DEFAULT, ["ALL"] if config.privileged
                                         else config.cap_add, config.cap_drop)
        except LabkitError as err:
            raise Invalid(err.what, err.hint) from None
        root = spec.process.user.uid == 0
        spec.process.capabilities = capabilities.oci_sets(kept) if root else {"bounding": kept}
        if config.privileged:  # every device, as docker run --privileged (seccomp is #12's)
            assert spec.linux is not None
            spec.linux.resources = {**(spec.linux.resources or {}), "devices": [{"allow": True, "access": "rwm"}]}
            spec.linux.extra.pop("maskedPaths", None)
            spec.linux.extra.pop("readonlyPaths", None)
    return apply


def with_mounts(mounts: list[OciMount]) -> SpecOption:
    """The record's volumes, binds and tmpfs; a mount at a default one's place replaces it."""
    def apply(spec: Spec) -> None:
        targets = {m.destination.rstrip("/") for m in mounts}
        spec.mounts = [m for m in spec.mounts if m.destination.rstrip("/") not in targets] + list(mounts)
    return apply


def with_root_propagation(config: ContainerConfig) -> SpecOption:
    """A shared or slave bind only reaches the host if the container's root is too (moby's
    setMounts sets linux.rootfsPropagation the same way)."""
    def apply(spec: Spec) -> None:
        wanted = mounts.root_propagation(config.mounts)
        if wanted:
            assert spec.linux is not None
            spec.linux.extra["rootfsPropagation"] = wanted
    return apply


def with_resources(config: ContainerConfig) -> SpecOption:
    """-m/--memory-swap/--cpus/--cpu-shares/--pids-limit as OCI linux.resources."""
    def apply(spec: Spec) -> None:
        assert spec.linux is not None
        r = config.resources
        res = dict(spec.linux.resources or {})
        memory: dict[str, int] = {}
        if r.memory is not None:
            memory["limit"] = r.memory
            # Docker: with -m alone, swap may equal the limit again (memory+swap = 2 × limit)
            memory["swap"] = r.memory_swap if r.memory_swap is not None else 2 * r.memory
        elif r.memory_swap is not None:
            raise Invalid("You should always set the Memory limit when using Memoryswap limit, "
                          "see usage.", "add -m, e.g. -m 64m --memory-swap 128m")
        if memory:
            res["memory"] = memory
        cpu: dict[str, int] = {}
        if r.nano_cpus:
            cpu.update(period=CPU_PERIOD, quota=r.nano_cpus * CPU_PERIOD // 1_000_000_000)
        if r.cpu_shares:
            cpu["shares"] = r.cpu_shares
        if cpu:
            res["cpu"] = cpu
        if r.pids_limit is not None:
            res["pids"] = {"limit": r.pids_limit}
        spec.linux.resources = res
    return apply


def with_network(config: ContainerConfig) -> SpecOption:
    """--network host: no network namespace of its own (the host's links, ports and routes).
    container:ID joins the other's namespace: its path is set at each start (the pid changes)."""
    def apply(spec: Spec) -> None:
        if config.network_mode == "host" and spec.linux:
            spec.linux.namespaces = [ns for ns in spec.linux.namespaces if ns.type != "network"]
    return apply


def with_init(config: ContainerConfig) -> SpecOption:
    """--init: tini (Docker's docker-init) as PID 1, bound read-only from the host; it
    forwards signals to the command and reaps zombies."""
    def apply(spec: Spec) -> None:
        if not config.init:
            return
        assert spec.process is not None
        spec.mounts.append(OciMount(INIT_PATH, "bind", init_binary(), ["rbind", "ro", "rprivate"]))
        spec.process.args = [INIT_PATH, "--", *spec.process.args]
    return apply


def init_binary() -> str:
    for path in INIT_BINARIES:
        if os.path.isfile(path):
            return path
    raise Invalid("--init needs tini on the host, and none was found (looked for "
                  + ", ".join(INIT_BINARIES) + ")", "install it: apt-get install tini")


def remove_bundle(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
