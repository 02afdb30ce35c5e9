"""A Containerfile (Dockerfile) subset: parsing and variable expansion — no execution here.

Supported: FROM, RUN, COPY, ENV, WORKDIR, USER, CMD, ENTRYPOINT, LABEL, EXPOSE, VOLUME,
ARG; comments, `\\` line continuations, the shell and JSON ("exec") forms, and
$VAR / ${VAR} / ${VAR:-default} / ${VAR:+alt} in the instructions Docker
expands them in (not RUN/CMD/ENTRYPOINT: the shell does that at run time).
"""
from __future__ import annotations

import dataclasses
import json
import re
import shlex

from ..errors import LabkitError

INSTRUCTIONS = ("FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "LABEL", "EXPOSE", "ARG", "VOLUME")
FLAGS = {"FROM": {"platform"}, "COPY": {"chown", "chmod"}, "RUN": set()}
EXPANDED = {"FROM", "COPY", "ENV", "WORKDIR", "USER", "LABEL", "EXPOSE", "ARG", "VOLUME"}
_VAR = re.compile(r"\\\$|\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class ContainerfileError(LabkitError):
    """The Containerfile cannot be parsed or uses something outside the subset."""


@dataclasses.dataclass(frozen=True)
class Instruction:
    cmd: str                          # upper case, e.g. "RUN"
    args: str                         # the rest of the line, continuations joined
    line: int                         # where it starts (1-based)
    flags: tuple[tuple[str, str], ...] = ()
    exec_form: tuple[str, ...] | None = None  # the JSON array form, when used

    def __str__(self) -> str:
        flags = "".join(f"--{k}={v} " for k, v in self.flags)
        body = json.dumps(list(self.exec_form)) if self.exec_form is not None else self.args
        return f"{self.cmd} {flags}{body}".rstrip()

    def flag(self, name: str) -> str | None:
        return dict(self.flags).get(name)

    def argv(self) -> list[str]:
        """RUN/CMD/ENTRYPOINT as an argv: the JSON form as is, the shell form via /bin/sh -c."""
        if self.exec_form is not None:
            return list(self.exec_form)
        return ["/bin/sh", "-c", self.args]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join `\\`-continued lines; drop comments and blank lines."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and buf):
            continue  # comments (and blank lines) inside a continuation are skipped, as Docker does
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        line = " ".join(part.strip() for part in buf).strip()
        buf = []
        if line:
            out.append((start, line))
    if buf:
        out.append((start, " ".join(buf).strip()))
    return out


def parse(text: str) -> list[Instruction]:
    """Parse a Containerfile into instructions (no expansion yet)."""
    found = []
    for number, line in _logical_lines(text):
        word, _, rest = line.partition(" ")
        cmd = word.upper()
        if cmd not in INSTRUCTIONS:
            hint = "use COPY for local files" if cmd == "ADD" else f"the subset is {', '.join(INSTRUCTIONS)}"
            raise ContainerfileError(f"line {number}: unsupported instruction {word!r}", hint)
        rest = rest.strip()
        flags = []
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            if name not in FLAGS.get(cmd, set()):
                raise ContainerfileError(f"line {number}: {cmd} --{name} is not supported",
                                         f"{cmd} accepts: {', '.join('--' + f for f in sorted(FLAGS.get(cmd, ()))) or 'no flags'}")
            flags.append((name, value))
            rest = rest.strip()
        exec_form = _json_form(rest) if cmd in ("RUN", "CMD", "ENTRYPOINT", "COPY", "VOLUME") else None
        if not rest:
            raise ContainerfileError(f"line {number}: {cmd} needs arguments", "see the Dockerfile reference")
        found.append(Instruction(cmd, rest, number, tuple(flags), exec_form))
    if not found or found[0].cmd not in ("FROM", "ARG"):
        raise ContainerfileError("a Containerfile must start with FROM (ARG lines may come before it)",
                                 "add e.g. `FROM busybox` or `FROM scratch` at the top")
    return found


def _json_form(rest: str) -> tuple[str, ...] | None:
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None  # not JSON: Docker treats it as the shell form
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def expand(text: str, variables: dict[str, str]) -> str:
    """Substitute $VAR, ${VAR}, ${VAR:-default}, ${VAR:+alt}; `\\$` stays a literal $."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "$"
        name = m.group("braced") or m.group("plain")
        value = variables.get(name, "")
        if m.group("op") == "-":
            return value or m.group("word")
        if m.group("op") == "+":
            return m.group("word") if value else ""
        return value
    return _VAR.sub(sub, text)


def key_values(args: str, cmd: str) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: `k=v k2="v 2"`, or ENV's legacy `key value with spaces`."""
    try:
        tokens = shlex.split(args, posix=True)
    except ValueError as err:
        raise ContainerfileError(f"{cmd} {args!r}: {err}", "check the quotes") from None
    if tokens and "=" not in tokens[0]:
        if cmd != "ENV" or len(tokens) < 2:
            raise ContainerfileError(f"{cmd} {args!r}: expected key=value", f"write it as {cmd} key=value")
        return [(tokens[0], args.split(None, 1)[1].strip())]
    pairs = []
    for token in tokens:
        key, eq, value = token.partition("=")
        if not eq or not key:
            raise ContainerfileError(f"{cmd} {args!r}: {token!r} is not key=value", f"write it as {cmd} key=value")
        pairs.append((key, value))
    return pairs


def copy_args(instr: Instruction, variables: dict[str, str]) -> tuple[list[str], str]:
    """COPY's sources and destination (expanded)."""
    parts = list(instr.exec_form) if instr.exec_form is not None else shlex.split(instr.args)
    parts = [expand(p, variables) for p in parts]
    if len(parts) < 2:
        raise ContainerfileError(f"line {instr.line}: COPY needs a source and a destination",
                                 "write COPY <src>... <dest>")
    return parts[:-1], parts[-1]


def volumes(instr: Instruction, variables: dict[str, str]) -> list[str]:
    """VOLUME /data /logs or VOLUME ["/data"]: absolute mount points for anonymous volumes."""
    paths = [expand(p, variables) for p in (instr.exec_form if instr.exec_form is not None else instr.args.split())]
    for path in paths:
        if not path.startswith("/"):
            raise ContainerfileError(f"line {instr.line}: VOLUME {path!r} is not an absolute path",
                                     "write VOLUME /data")
    if not paths:
        raise ContainerfileError(f"line {instr.line}: VOLUME needs a path", "write VOLUME /data")
    return paths


def exposed(args: str) -> list[str]:
    """EXPOSE 80 53/udp -> ['80/tcp', '53/udp']."""
    ports = []
    for item in args.split():
        port, _, proto = item.partition("/")
        if not port.isdigit() or not 0 < int(port) < 65536 or (proto or "tcp") not in ("tcp", "udp", "sctp"):
            raise ContainerfileError(f"EXPOSE {item!r} is not a port", "write EXPOSE 80 or EXPOSE 53/udp")
        ports.append(f"{int(port)}/{proto or 'tcp'}")
    return ports
