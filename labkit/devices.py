"""Device rules: which device nodes a container may open or create (OCI linux.resources.devices).

A device node is only a name for (type, major, minor); whoever can create or open
one reaches the host's hardware. The devices cgroup is what stops that, and
CAP_MKNOD alone does not get past it. The OCI rules are a list of
{allow, type (a|b|c), major, minor, access (any of r, w, m)}, applied in order;
a missing major/minor (or -1) matches any.

Both backends apply the same state, computed the way runc's emulator does it
(devices_emulator.go), starting from a fresh group's allow-everything:
- cgroup v1: lines written to devices.deny / devices.allow — the "a" deny-all
  first, then each allow, in runc's sorted order — and devices.list read back;
- cgroup v2: there are no such files. The rules are compiled to an eBPF
  BPF_PROG_TYPE_CGROUP_DEVICE program, instruction by instruction as runc's
  devicefilter.go assembles it, loaded with bpf(BPF_PROG_LOAD) and attached to
  the group's directory (BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI). The kernel frees
  it with the group: nothing to detach on removal.

Unlike runc, labkit appends no rules of its own: a spec that wants runc's and
Docker's defaults lists them — `default_rules()` is deny-all plus DEFAULT_ALLOWED.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import struct
from typing import Any, Iterable

from . import sys as lsys
from .cgroups import CgroupError

TYPES = ("a", "b", "c")
ACCESS = "rwm"

# The devices runc (specconv.AllowedDevices) and Docker let every container use, as OCI
# entries: mknod of any node (using one is a separate right), the standard character
# devices, the pseudo-terminals (/dev/pts/*, /dev/ptmx) and /dev/net/tun. Not /dev/fuse.
DEFAULT_ALLOWED: list[dict[str, Any]] = [
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # /dev/null
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # /dev/random
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # /dev/full
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # /dev/tty
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # /dev/zero
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # /dev/urandom
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # /dev/pts/*
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # /dev/ptmx
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},  # /dev/net/tun
]
DENY_ALL: dict[str, Any] = {"allow": False, "access": "rwm"}


def default_rules() -> list[dict[str, Any]]:
    """What `runc spec` plus runc's built-in list give a container: deny all, allow the defaults."""
    return [dict(DENY_ALL)] + [dict(rule) for rule in DEFAULT_ALLOWED]


class DeviceRuleError(CgroupError):
    """A device rule is malformed, or cannot be expressed in the devices cgroup."""


# --- rules ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rule:
    allow: bool
    type: str  # "a", "b" or "c"
    major: int | None  # None: any
    minor: int | None
    access: str  # a non-empty subset of "rwm", in that order

    def cgroup_string(self) -> str:
        """The line devices.allow / devices.deny take (and devices.list shows)."""
        if self.type == "a":
            return "a *:* rwm"
        return f"{self.type} {_num(self.major)}:{_num(self.minor)} {self.access}"


def _num(value: int | None) -> str:
    return "*" if value is None else str(value)


def _access(text: str) -> str:
    """Normalise e.g. "mr" to "rm" (devices.list's order)."""
    return "".join(c for c in ACCESS if c in text)


def problems(devices: Any) -> list[str]:
    """What is wrong with an OCI linux.resources.devices list (empty if nothing)."""
    if devices is None:
        return []
    if not isinstance(devices, list):
        return ["linux.resources.devices must be a list of {allow, type, major, minor, access}"]
    found = []
    for i, entry in enumerate(devices):
        where = f"linux.resources.devices[{i}]"
        if not isinstance(entry, dict):
            found.append(f"{where} must be an object like {DENY_ALL}")
            continue
        unknown = sorted(set(entry) - {"allow", "type", "major", "minor", "access"})
        if unknown:
            found.append(f"{where}: unknown field(s) {', '.join(unknown)}")
        if not isinstance(entry.get("allow"), bool):
            found.append(f"{where}.allow must be true or false")
        if entry.get("type", "a") not in TYPES:
            found.append(f"{where}.type {entry.get('type')!r} is not a, b or c")
        for key in ("major", "minor"):
            value = entry.get(key)
            if value is not None and (type(value) is not int or not -1 <= value < 2**32):
                found.append(f"{where}.{key} {value!r} is not a device number (or -1 for any)")
        access = entry.get("access")
        if not isinstance(access, str) or not access or set(access) - set(ACCESS):
            found.append(f"{where}.access {access!r} must be a non-empty combination of r, w and m")
    return found


def parse(devices: Iterable[dict[str, Any]]) -> list[Rule]:
    """OCI entries -> rules (call problems() first; this assumes a valid list)."""
    rules = []
    for entry in devices:
        major, minor = entry.get("major"), entry.get("minor")
        rules.append(Rule(allow=entry["allow"], type=entry.get("type") or "a",
                          major=None if major is None or major < 0 else major,
                          minor=None if minor is None or minor < 0 else minor,
                          access=_access(entry["access"])))
    return rules


# --- the emulator: what state a list of rules leaves a devices cgroup in ------------------
Key = tuple[str, "int | None", "int | None"]  # (type, major, minor)


@dataclasses.dataclass
class State:
    """default_allow: whether unlisted devices are allowed; rules: the exceptions to it."""

    default_allow: bool = True  # a fresh cgroup allows everything
    rules: dict[Key, str] = dataclasses.field(default_factory=dict)

    def apply(self, rule: Rule) -> None:
        """One rule, as the v1 kernel applies it (and as runc's emulator mirrors it)."""
        if rule.type == "a":  # resets the group: everything allowed or everything denied
            self.default_allow, self.rules = rule.allow, {}
            return
        key = (rule.type, rule.major, rule.minor)
        if rule.allow != self.default_allow:  # an exception to the default: add it
            self.rules[key] = _access(self.rules.get(key, "") + rule.access)
            return
        self._check_no_wildcard_hole(rule, key)
        left = _access("".join(c for c in self.rules.get(key, "") if c not in rule.access))
        if left:
            self.rules[key] = left
        else:
            self.rules.pop(key, None)

    def _check_no_wildcard_hole(self, rule: Rule, key: Key) -> None:
        # v1 silently ignores removing part of a wildcard exception; refuse, as runc does.
        for wide in ((rule.type, None, rule.minor), (rule.type, rule.major, None), (rule.type, None, None)):
            overlap = set(self.rules.get(wide, "")) & set(rule.access) if wide != key else set()
            if overlap:
                shown = Rule(not rule.allow, wide[0], wide[1], wide[2], self.rules[wide]).cgroup_string()
                raise DeviceRuleError(
                    f"device rule {rule.cgroup_string()!r} ({'allow' if rule.allow else 'deny'}) cannot "
                    f"punch a hole in the wildcard rule {shown!r}",
                    "the devices cgroup cannot except one device from a wildcard: list the devices "
                    "one by one instead of the wildcard")

    def is_allow_all(self) -> bool:
        return self.default_allow and not self.rules

    def ordered(self) -> list[tuple[Key, str]]:
        """The exceptions sorted by (major, minor, type), any (-1) first, as runc sorts them."""
        def order(item: tuple[Key, str]) -> tuple[int, int, str]:
            (kind, major, minor), _ = item
            return (-1 if major is None else major, -1 if minor is None else minor, kind)
        return sorted(self.rules.items(), key=order)


def emulate(rules: Iterable[Rule], start: State | None = None) -> State:
    """The state `rules` leave a group in, from `start` (a fresh group: allow all)."""
    state = State(start.default_allow, dict(start.rules)) if start else State()
    for rule in rules:
        state.apply(rule)
    return state


def from_list(text: str) -> State:
    """A v1 devices.list -> state. "a *:* rwm" means allow-all (its deny exceptions are not shown)."""
    state = State(default_allow=False)
    for line in text.splitlines():
        if not line.strip():
            continue
        kind, numbers, access = line.split()
        if kind == "a":
            return State(default_allow=True)
        major, minor = numbers.split(":")
        state.apply(Rule(True, kind, None if major == "*" else int(major),
                         None if minor == "*" else int(minor), _access(access)))
    return state


def transition(current: State, target: State) -> list[Rule]:
    """The fewest lines that turn `current` into `target`, in runc's order.

    A group in allow-all mode may hide deny exceptions (devices.list cannot show
    them), so it, or a change of mode, starts with the disruptive "a" line."""
    out: list[Rule] = []
    old = current.rules
    if current.default_allow or current.default_allow != target.default_allow:
        out.append(Rule(target.default_allow, "a", None, None, "rwm"))
        old = {}
    for (kind, major, minor), perms in State(current.default_allow, old).ordered():
        dropped = _access("".join(c for c in perms if c not in target.rules.get((kind, major, minor), "")))
        if dropped:
            out.append(Rule(target.default_allow, kind, major, minor, dropped))
    for (kind, major, minor), perms in target.ordered():
        gained = _access("".join(c for c in perms if c not in old.get((kind, major, minor), "")))
        if gained:
            out.append(Rule(not target.default_allow, kind, major, minor, gained))
    return out


# --- cgroup v1 -------------------------------------------------------------------------------
def v1_writes(devices_list: str, rules: list[Rule]) -> list[tuple[str, str]]:
    """(file, line) writes that take a group showing `devices_list` to the state of `rules`."""
    return [("devices.allow" if rule.allow else "devices.deny", rule.cgroup_string())
            for rule in transition(from_list(devices_list), emulate(rules))]


def v1_list_matches(devices_list: str, rules: list[Rule]) -> bool:
    """Whether devices.list shows the state of `rules` (in allow-all mode only the mode shows)."""
    after, target = from_list(devices_list), emulate(rules)
    return after.default_allow == target.default_allow and (target.default_allow or after.rules == target.rules)


def apply_v1(directory: str, rules: list[Rule]) -> None:
    """Write the rules to a v1 devices cgroup and check devices.list shows what was meant."""
    list_path = os.path.join(directory, "devices.list")
    with open(list_path) as f:
        writes = v1_writes(f.read(), rules)
    for name, line in writes:
        try:
            with open(os.path.join(directory, name), "w") as f:
                f.write(line)
        except OSError as err:
            raise DeviceRuleError(f"linux.resources.devices: writing {line!r} to {directory}/{name} failed: "
                                  f"{os.strerror(err.errno)}",
                                  "a group cannot allow a device its parent denies; and this needs root") from None
    with open(list_path) as f:
        if not v1_list_matches(f.read(), rules):
            raise DeviceRuleError(f"linux.resources.devices: {list_path} does not show the rules written",
                                  "another process may be changing this group's devices cgroup")


# --- cgroup v2: the eBPF program ------------------------------------------------------------
# struct bpf_cgroup_dev_ctx { u32 access_type (type | access << 16); u32 major; u32 minor; }
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2
BPF_DEVCG_ACC = {"m": 1, "r": 2, "w": 4}
LICENSE = "Apache"  # the string runc loads its filter with (no GPL-only helpers are used)

# opcodes (linux/bpf_common.h, linux/bpf.h): class | operation | source
_LDX_MEM_W = 0x61   # BPF_LDX | BPF_MEM | BPF_W
_AND32_K = 0x54     # BPF_ALU | BPF_AND | BPF_K
_RSH32_K = 0x74     # BPF_ALU | BPF_RSH | BPF_K
_MOV32_K = 0xB4     # BPF_ALU | BPF_MOV | BPF_K
_MOV32_X = 0xBC     # BPF_ALU | BPF_MOV | BPF_X
_JNE_K = 0x55       # BPF_JMP | BPF_JNE | BPF_K
_JNE_X = 0x5D       # BPF_JMP | BPF_JNE | BPF_X
_EXIT = 0x95        # BPF_JMP | BPF_EXIT


@dataclasses.dataclass(frozen=True)
class Insn:
    """One eBPF instruction; `target` names the block a jump goes to until assemble() resolves it."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: int | None = None

    def encode(self) -> bytes:
        # struct bpf_insn on a little-endian host: u8 code; u8 dst:4, src:4; s16 off; s32 imm
        imm = (self.imm + 2**31) % 2**32 - 2**31  # a u32 device number, as the s32 field holds it
        return struct.pack("<BBhi", self.code, self.dst | self.src << 4, self.off, imm)


def _header() -> list[Insn]:
    return [Insn(_LDX_MEM_W, dst=2, src=1, off=0),     # r2 = ctx->access_type
            Insn(_AND32_K, dst=2, imm=0xFFFF),          # r2 &= 0xffff: the device type
            Insn(_LDX_MEM_W, dst=3, src=1, off=0),     # r3 = ctx->access_type
            Insn(_RSH32_K, dst=3, imm=16),              # r3 >>= 16: the access asked for
            Insn(_LDX_MEM_W, dst=4, src=1, off=4),     # r4 = ctx->major
            Insn(_LDX_MEM_W, dst=5, src=1, off=8)]     # r5 = ctx->minor


def _block(kind: str, major: int | None, minor: int | None, access: str, allow: bool, following: int) -> list[Insn]:
    """`if the request matches: return allow` — any mismatch jumps to block `following`."""
    insns = [Insn(_JNE_K, dst=2, imm=BPF_DEVCG_DEV_BLOCK if kind == "b" else BPF_DEVCG_DEV_CHAR, target=following)]
    bits = sum(BPF_DEVCG_ACC[c] for c in access)
    if bits != 7:  # rwm matches any access: no test
        insns += [Insn(_MOV32_X, dst=1, src=3),            # r1 = r3
                  Insn(_AND32_K, dst=1, imm=bits),          # r1 &= allowed bits
                  Insn(_JNE_X, dst=1, src=3, target=following)]  # asked for more: next block
    if major is not None:
        insns.append(Insn(_JNE_K, dst=4, imm=major, target=following))
    if minor is not None:
        insns.append(Insn(_JNE_K, dst=5, imm=minor, target=following))
    return insns + [Insn(_MOV32_K, dst=0, imm=int(allow)), Insn(_EXIT)]


def program(state: State) -> list[Insn]:
    """The filter for `state`: one block per exception, then the default (1 = allow, 0 = deny)."""
    blocks = [_block(kind, major, minor, access, not state.default_allow, n + 1)
              for n, ((kind, major, minor), access) in enumerate(state.ordered())]
    blocks.append([Insn(_MOV32_K, dst=0, imm=int(state.default_allow)), Insn(_EXIT)])
    insns, starts = _header(), []
    for block in blocks:
        starts.append(len(insns))
        insns += block
    # a jump's offset counts from the instruction after it
    return [dataclasses.replace(insn, off=starts[insn.target] - i - 1, target=None) if insn.target is not None
            else insn for i, insn in enumerate(insns)]


def assemble(insns: list[Insn]) -> bytes:
    return b"".join(insn.encode() for insn in insns)


_NAMES = {_LDX_MEM_W: "LdXMemW", _AND32_K: "AndImm32", _RSH32_K: "RShImm32", _MOV32_K: "MovImm32",
          _MOV32_X: "MovReg32", _JNE_K: "JNEImm", _JNE_X: "JNEReg", _EXIT: "Exit"}


def disassemble(code: bytes) -> list[str]:
    """Instruction bytes -> text in the notation of runc's devicefilter_test.go (cilium/ebpf's)."""
    lines = []
    for i in range(0, len(code), 8):
        op, regs, off, imm = struct.unpack("<BBhi", code[i:i + 8])
        name, dst, src = _NAMES.get(op, f"op{op:#x}"), regs & 0xF, regs >> 4
        if op == _EXIT:
            lines.append(name)
        elif op == _LDX_MEM_W:
            lines.append(f"{name} dst: r{dst} src: r{src} off: {off} imm: {imm}")
        elif op == _JNE_K:
            lines.append(f"{name} dst: r{dst} off: {off} imm: {imm}")
        elif op == _JNE_X:
            lines.append(f"{name} dst: r{dst} off: {off} src: r{src}")
        elif op == _MOV32_X:
            lines.append(f"{name} dst: r{dst} src: r{src}")
        else:
            lines.append(f"{name} dst: r{dst} imm: {imm}")
    return lines


def attached(directory: str) -> list[int]:
    """Ids of the device programs attached to the cgroup v2 directory itself."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return lsys.bpf_prog_query(fd, lsys.BPF_CGROUP_DEVICE)
    finally:
        os.close(fd)


def apply_v2(directory: str, rules: list[Rule]) -> None:
    """Load the filter for `rules` and attach it to the group; programs attached before go.

    The group holds the only reference that matters: once it is removed (rmdir), the
    kernel detaches and frees the program — nothing to clean up here."""
    code = assemble(program(emulate(rules)))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        old = lsys.bpf_prog_query(dir_fd, lsys.BPF_CGROUP_DEVICE)
        prog_fd = _load(code)
        try:
            lsys.bpf_prog_attach(dir_fd, prog_fd, lsys.BPF_CGROUP_DEVICE, lsys.BPF_F_ALLOW_MULTI)
        finally:
            os.close(prog_fd)  # attached, the group keeps it alive
        for prog_id in old:  # an update replaces the previous filter, as runc's does
            _detach(dir_fd, prog_id)
    finally:
        os.close(dir_fd)


def _load(code: bytes) -> int:
    try:
        return lsys.bpf_prog_load(lsys.BPF_PROG_TYPE_CGROUP_DEVICE, code, LICENSE, "labkit_devices")
    except OSError as err:
        if err.errno != 1:  # EPERM: before Linux 5.11 BPF memory counts against RLIMIT_MEMLOCK
            raise
    # Raised only for this load and put back: the container forked later must not inherit it.
    saved = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    try:
        return lsys.bpf_prog_load(lsys.BPF_PROG_TYPE_CGROUP_DEVICE, code, LICENSE, "labkit_devices")
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, saved)


def _detach(dir_fd: int, prog_id: int) -> None:
    try:
        fd = lsys.bpf_prog_get_fd_by_id(prog_id)
    except OSError:  # freed meanwhile
        return
    try:
        lsys.bpf_prog_detach(dir_fd, fd, lsys.BPF_CGROUP_DEVICE)
    finally:
        os.close(fd)


# --- both ---------------------------------------------------------------------------------------
def apply(directory: str, version: int, devices: list[dict[str, Any]] | None) -> None:
    """Apply OCI linux.resources.devices, then runc's DEFAULT_ALLOWED, to the group at `directory`
    (v1: its devices hierarchy)."""
    found = problems(devices)
    if found:
        raise DeviceRuleError("; ".join(found), "see the OCI runtime spec, config-linux.md, 'Allowed Device list'")
    if not devices:  # no rules: the group keeps what it inherited
        return
    # As runc: its built-in allow-list always follows the spec's rules. podman and containerd
    # write only "deny all" and count on it (a terminal needs /dev/ptmx and /dev/pts/*).
    rules = parse(devices) + parse(DEFAULT_ALLOWED)
    if version == 2:
        apply_v2(directory, rules)
    else:
        apply_v1(directory, rules)
