"""Docker's run-time defaults: what `docker run` adds to a runtime spec unless told otherwise.

They are the engine's, not the image's nor the runtime's: `runc spec` gives
runc's own (3 capabilities, no new privileges), an image only says what to run
and as whom, and dockerd adds these (moby's oci/defaults.go, oci/caps):
  - its 14 capabilities: held by root; another user gets them only as a bound
    (it could regain them through a setuid or file-capability program);
  - no_new_privileges off (setuid programs work, as in Docker);
  - device rules: deny every device; the runtime then allows the few a
    container needs (null, zero, tty, ptmx, ...): CAP_MKNOD alone would let root
    make a node for a host disk;
  - masked and read-only paths under /proc and /sys.
`docker build`'s RUN steps get the same (labkit.images.build uses this too).
"""
from __future__ import annotations

from .. import capabilities, devices
from ..runtime.spec import Spec

# what a container must not read (host secrets, kernel internals) ...
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
# ... and what it may read but not change (kernel tunables, sysrq).
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def apply(spec: Spec) -> Spec:
    assert spec.process is not None and spec.linux is not None
    root = spec.process.user.uid == 0
    spec.process.capabilities = capabilities.oci_sets(capabilities.DOCKER_DEFAULT) if root else {
        "bounding": list(capabilities.DOCKER_DEFAULT)}
    spec.process.noNewPrivileges = False
    spec.linux.resources = {**(spec.linux.resources or {}), "devices": [dict(devices.DENY_ALL)]}
    spec.linux.extra["maskedPaths"] = list(MASKED_PATHS)
    spec.linux.extra["readonlyPaths"] = list(READONLY_PATHS)
    return spec
