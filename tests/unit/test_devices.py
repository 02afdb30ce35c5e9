"""Device rules without a kernel: the emulator, the v1 writes, and the eBPF program's bytes.

The expected programs are the listings in runc's devicefilter_test.go
(opencontainers/cgroups, devices/), in cilium/ebpf's notation, where a jump
names its target block; `resolve` turns those names into the offsets the
instruction bytes hold.
"""
import re
import struct

import pytest

from labkit import devices
from labkit import sys as lsys
from labkit.devices import Rule

HEADER = """
    LdXMemW dst: r2 src: r1 off: 0 imm: 0
    AndImm32 dst: r2 imm: 65535
    LdXMemW dst: r3 src: r1 off: 0 imm: 0
    RShImm32 dst: r3 imm: 16
    LdXMemW dst: r4 src: r1 off: 4 imm: 0
    LdXMemW dst: r5 src: r1 off: 8 imm: 0
"""


def resolve(listing: str) -> list[str]:
    """runc's listing ("block-N:" labels, "off: -1 ... <block-N>" jumps) -> resolved instructions."""
    lines, labels = [], {}
    for raw in listing.strip().splitlines():
        line = re.sub(r"^\s*\d+:\s*", "", raw.strip())
        if not line or line.startswith("//"):
            continue
        if line.endswith(":"):
            labels[line[:-1]] = len(lines)
        else:
            lines.append(line)
    out = []
    for i, line in enumerate(lines):
        jump = re.search(r" <(block-\d+)>$", line)
        if jump:
            line = line[:jump.start()].replace("off: -1", f"off: {labels[jump.group(1)] - i - 1}")
        out.append(line)
    return out


def listing(rules: list[dict]) -> list[str]:
    return devices.disassemble(devices.assemble(devices.program(devices.emulate(devices.parse(rules)))))


def test_default_allowed_is_runcs_allowed_devices_list():
    shown = [r.cgroup_string() for r in devices.parse(devices.DEFAULT_ALLOWED)]
    assert shown == ["c *:* m", "b *:* m", "c 1:3 rwm", "c 1:8 rwm", "c 1:7 rwm", "c 5:0 rwm", "c 1:5 rwm",
                     "c 1:9 rwm", "c 136:* rwm", "c 5:2 rwm", "c 10:200 rwm"]
    assert all(r.allow for r in devices.parse(devices.DEFAULT_ALLOWED))
    assert devices.default_rules()[0] == {"allow": False, "access": "rwm"}


def test_builtin_allow_list_compiles_to_runcs_program():
    # runc's TestDeviceFilter_BuiltInAllowList: its emulator starts from deny-all; a fresh
    # cgroup (labkit's start) allows all, so the spec says deny-all first, as `runc spec`'s does.
    expected = HEADER + """
    block-0:
        JNEImm dst: r2 off: -1 imm: 1 <block-1>
        MovReg32 dst: r1 src: r3
        AndImm32 dst: r1 imm: 1
        JNEReg dst: r1 off: -1 src: r3 <block-1>
        MovImm32 dst: r0 imm: 1
        Exit
    block-1:
        JNEImm dst: r2 off: -1 imm: 2 <block-2>
        MovReg32 dst: r1 src: r3
        AndImm32 dst: r1 imm: 1
        JNEReg dst: r1 off: -1 src: r3 <block-2>
        MovImm32 dst: r0 imm: 1
        Exit
    """
    for n, (major, minor) in enumerate([(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (10, 200)], 2):
        expected += f"""
    block-{n}:
        JNEImm dst: r2 off: -1 imm: 2 <block-{n + 1}>
        JNEImm dst: r4 off: -1 imm: {major} <block-{n + 1}>
        JNEImm dst: r5 off: -1 imm: {minor} <block-{n + 1}>
        MovImm32 dst: r0 imm: 1
        Exit
    """
    expected += """
    block-10:
        JNEImm dst: r2 off: -1 imm: 2 <block-11>
        JNEImm dst: r4 off: -1 imm: 136 <block-11>
        MovImm32 dst: r0 imm: 1
        Exit
    block-11:
        MovImm32 dst: r0 imm: 0
        Exit
    """
    got = listing(devices.default_rules())
    assert got == resolve(expected)
    assert len(got) == 64  # instructions 0..63, as in runc's listing


@pytest.mark.parametrize("rules, tail", [
    ([{"allow": False, "access": "rwm"}],  # runc's TestDeviceFilter_Nil: deny everything
     "block-0:\n MovImm32 dst: r0 imm: 0\n Exit"),
    ([{"allow": True, "type": "a", "access": "rwm"}],  # TestDeviceFilter_Privileged
     "block-0:\n MovImm32 dst: r0 imm: 1\n Exit"),
    ([{"allow": True, "type": "a", "access": "rwm"},  # TestDeviceFilter_PrivilegedExceptSingleDevice
      {"allow": False, "type": "b", "major": 8, "minor": 0, "access": "rwm"}],
     """block-0:
        JNEImm dst: r2 off: -1 imm: 1 <block-1>
        JNEImm dst: r4 off: -1 imm: 8 <block-1>
        JNEImm dst: r5 off: -1 imm: 0 <block-1>
        MovImm32 dst: r0 imm: 0
        Exit
     block-1:
        MovImm32 dst: r0 imm: 1
        Exit"""),
    ([{"allow": False, "type": "b", "major": 8, "minor": 1, "access": "rwm"},  # TestDeviceFilter_Weird:
      {"allow": True, "type": "a", "access": "rwm"},  # the "a" rule resets the group, so 8:1 is allowed
      {"allow": False, "type": "b", "major": 8, "minor": 2, "access": "rwm"}],
     """block-0:
        JNEImm dst: r2 off: -1 imm: 1 <block-1>
        JNEImm dst: r4 off: -1 imm: 8 <block-1>
        JNEImm dst: r5 off: -1 imm: 2 <block-1>
        MovImm32 dst: r0 imm: 0
        Exit
     block-1:
        MovImm32 dst: r0 imm: 1
        Exit"""),
])
def test_runcs_other_device_filters(rules, tail):
    assert listing(rules) == resolve(HEADER + tail)


def test_instruction_bytes():
    code = devices.assemble(devices.program(devices.emulate(devices.parse(
        [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]))))
    insns = [code[i:i + 8] for i in range(0, len(code), 8)]
    assert insns[0] == bytes.fromhex("6112000000000000")  # ldxw r2, [r1+0]: regs byte = src << 4 | dst
    assert insns[1] == bytes.fromhex("54020000ffff0000")  # and32 r2, 0xffff
    assert insns[3] == bytes.fromhex("7403000010000000")  # rsh32 r3, 16
    assert insns[5] == bytes.fromhex("6115080000000000")  # ldxw r5, [r1+8]
    # the rule's block (8 instructions): not a char device -> jump 7 ahead, to the default
    assert insns[6] == bytes.fromhex("5502070002000000")
    assert insns[7] == bytes.fromhex("bc31000000000000")  # mov32 r1, r3
    assert insns[8] == bytes.fromhex("5401000006000000")  # and32 r1, r|w (2|4): asked for more -> no match
    assert insns[9] == bytes.fromhex("5d31040000000000")  # jne r1, r3, +4
    assert insns[-2:] == [bytes.fromhex("b400000000000000"), bytes.fromhex("9500000000000000")]  # return 0
    assert len(code) == 8 * 16
    assert struct.unpack("<BBhi", insns[10])[3] == 1 and struct.unpack("<BBhi", insns[11])[3] == 3


def test_a_device_number_above_2_31_is_encoded_as_the_u32_the_kernel_compares():
    insn = devices.Insn(0x55, dst=4, imm=2**32 - 1)
    assert insn.encode()[4:] == b"\xff\xff\xff\xff"


def test_v1_writes_deny_all_first_then_the_allows_in_runcs_order():
    writes = devices.v1_writes("a *:* rwm\n", devices.parse(devices.default_rules()))
    assert writes == [("devices.deny", "a *:* rwm"), ("devices.allow", "b *:* m"), ("devices.allow", "c *:* m"),
                      ("devices.allow", "c 1:3 rwm"), ("devices.allow", "c 1:5 rwm"), ("devices.allow", "c 1:7 rwm"),
                      ("devices.allow", "c 1:8 rwm"), ("devices.allow", "c 1:9 rwm"), ("devices.allow", "c 5:0 rwm"),
                      ("devices.allow", "c 5:2 rwm"), ("devices.allow", "c 10:200 rwm"),
                      ("devices.allow", "c 136:* rwm")]


def test_v1_writes_are_minimal_from_an_allow_list_already_there():
    current = "c 1:3 rwm\nc 1:5 rwm\nc 1:9 r\n"
    rules = devices.parse([{"allow": False, "access": "rwm"},
                           {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                           {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rw"}])
    assert devices.v1_writes(current, rules) == [("devices.deny", "c 1:5 rwm"), ("devices.allow", "c 1:9 w")]
    assert devices.v1_list_matches("c 1:3 rwm\nc 1:9 rw\n", rules)
    assert not devices.v1_list_matches("c 1:3 rwm\n", rules)
    assert not devices.v1_list_matches("a *:* rwm\n", rules)


def test_deny_exceptions_in_allow_all_mode():
    rules = devices.parse([{"allow": False, "type": "b", "major": 7, "access": "rw"}])  # no deny-all first
    state = devices.emulate(rules)
    assert state.default_allow and state.rules == {("b", 7, None): "rw"}
    assert devices.v1_writes("a *:* rwm", rules) == [("devices.allow", "a *:* rwm"), ("devices.deny", "b 7:* rw")]
    assert devices.v1_list_matches("a *:* rwm", rules)  # devices.list cannot show deny exceptions


def test_access_is_merged_and_removed_per_device():
    state = devices.emulate(devices.parse([
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "mw"},
        {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"}]))
    assert state.rules == {("c", 1, 3): "rm"}


def test_a_hole_in_a_wildcard_rule_is_refused_as_runc_refuses_it():
    rules = devices.parse([{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "access": "m"},
                           {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "m"}])
    with pytest.raises(devices.DeviceRuleError, match="cannot punch a hole in the wildcard rule 'c \\*:\\* m'") as info:
        devices.emulate(rules)
    assert "one by one" in info.value.hint


def test_from_list_reads_the_kernels_format():
    state = devices.from_list("c 1:3 rwm\nc 136:* rwm\nb *:* m\n")
    assert not state.default_allow
    assert state.rules == {("c", 1, 3): "rwm", ("c", 136, None): "rwm", ("b", None, None): "m"}
    assert devices.from_list("a *:* rwm\n").is_allow_all()


@pytest.mark.parametrize("entries, match", [
    ("all", "must be a list"),
    ([{"type": "c", "access": "rwm"}], r"devices\[0\]\.allow must be true or false"),
    ([{"allow": True, "type": "u", "access": "rwm"}], r"\.type 'u' is not a, b or c"),
    ([{"allow": True, "type": "c", "major": "1", "access": "rwm"}], r"\.major '1' is not a device number"),
    ([{"allow": True, "type": "c", "access": ""}], r"\.access '' must be a non-empty combination"),
    ([{"allow": True, "type": "c", "access": "rwx"}], r"\.access 'rwx'"),
    ([{"allow": True, "access": "rwm", "path": "/dev/x"}], r"unknown field\(s\) path"),
])
def test_problems_name_the_entry_and_field(entries, match):
    found = devices.problems(entries)
    assert found and re.search(match, "; ".join(found)), found


def test_good_rules_have_no_problems_and_wildcards_parse_as_any():
    assert devices.problems(devices.default_rules()) == []
    assert devices.problems(None) == []
    rule = devices.parse([{"allow": True, "type": "b", "major": -1, "minor": -1, "access": "mr"}])[0]
    assert rule == Rule(True, "b", None, None, "rm") and rule.cgroup_string() == "b *:* rm"


def test_apply_refuses_bad_rules_before_touching_anything(tmp_path):
    with pytest.raises(devices.DeviceRuleError, match=r"devices\[0\]\.access"):
        devices.apply(str(tmp_path / "missing"), 1, [{"allow": True, "access": "x"}])
    devices.apply(str(tmp_path / "missing"), 2, [])  # no rules: nothing to do, nothing opened


def test_bpf_syscall_numbers():
    assert lsys.syscall_number("bpf", "x86_64") == 321
    assert lsys.syscall_number("bpf", "aarch64") == 280
    assert (lsys.BPF_PROG_TYPE_CGROUP_DEVICE, lsys.BPF_CGROUP_DEVICE, lsys.BPF_F_ALLOW_MULTI) == (15, 6, 2)
