"""What `docker inspect`, `docker ps` and `--format` show, from a container record.

Field names and wording are Docker's (`docker inspect` JSON, `docker ps`
columns and its "Up 3 seconds" / "Exited (0) 2 minutes ago" status text), so
a reader can hold labkit's output next to Docker's or podman's. `render` is a
small subset of Go's text/template: `{{.Path.To.Field}}` and `{{json .X}}`.
"""
from __future__ import annotations

import json
import re
from typing import Any

from ..runtime.spec import Spec
from .names import short_id
from .records import ContainerRecord
from .status import Status, inspect_state
from .timefmt import now_ns, rfc3339_nano


def container_json(rec: ContainerRecord, bundle: str, log_path: str, volume_path: Any,
                   networks: list[Any] = ()) -> dict[str, Any]:
    """`docker inspect CONTAINER`'s object (the fields labkit has); `networks` is the
    container's (Network, Endpoint) pairs."""
    c, st = rec.config, rec.state
    try:
        process = Spec.load(bundle).process
        args, env = (list(process.args), list(process.env)) if process else ([], list(c.env))
    except Exception:  # a half-made record (crash during create) still inspects
        args, env = [], list(c.env)
    return {
        "Id": rec.id,
        "Created": rfc3339_nano(st.created_at),
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": inspect_state(st),
        "Image": c.image_id,
        "LogPath": log_path,
        "Name": "/" + st.name,
        "RestartCount": st.restart_count,
        "Driver": "overlay",
        "Platform": "linux",
        "GraphDriver": graph_driver(bundle),
        "HostConfig": {
            "LogConfig": {"Type": "json-file", "Config": dict(c.log_opts)},
            "RestartPolicy": c.restart_policy.to_json(),
            "AutoRemove": c.auto_remove,
            "CapAdd": list(c.cap_add) or None,
            "CapDrop": list(c.cap_drop) or None,
            "Privileged": c.privileged,
            "ReadonlyRootfs": c.read_only,
            "Init": c.init or None,
            "Memory": c.resources.memory or 0,
            "MemorySwap": c.resources.memory_swap or 0,
            "NanoCpus": c.resources.nano_cpus or 0,
            "CpuShares": c.resources.cpu_shares or 0,
            "PidsLimit": c.resources.pids_limit,
            "Binds": [f"{m.source}:{m.target}" + (":ro" if m.read_only else "")
                      for m in c.mounts if m.type == "bind"] or None,
            "Tmpfs": {m.target: ",".join(m.options) for m in c.mounts if m.type == "tmpfs"} or None,
            "NetworkMode": c.network_mode,
            "PortBindings": port_bindings([p.__dict__ for p in c.ports]),
            "PublishAllPorts": c.publish_all,
            "Dns": list(c.dns),
        },
        "NetworkSettings": network_settings(rec, networks),
        "Mounts": [mount_json(m, volume_path) for m in c.mounts if m.type != "tmpfs"],
        "Config": {
            "Hostname": c.hostname or short_id(rec.id),
            "User": c.user,
            "Tty": c.tty,
            "OpenStdin": c.open_stdin,
            "Env": env,  # the image's and the user's, merged, as the process gets them
            "Cmd": list(c.command) or None,
            "Image": c.image,
            "WorkingDir": c.working_dir,
            "Entrypoint": None if c.entrypoint is None else list(c.entrypoint),
            "Labels": dict(c.labels),
            "StopSignal": c.stop_signal,
            **({"StopTimeout": c.stop_timeout} if c.stop_timeout is not None else {}),
        },
    }


def port_bindings(ports: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """{"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}: Docker's shape ("" port: any)."""
    out: dict[str, list[dict[str, str]]] = {}
    for p in ports:
        out.setdefault(f"{p['container_port']}/{p['proto']}", []).append(
            {"HostIp": p["host_ip"], "HostPort": str(p["host_port"] or "")})
    return out


def network_settings(rec: ContainerRecord, networks: list[Any]) -> dict[str, Any]:
    """NetworkSettings: each network's address, gateway and MAC; the ports published now."""
    nets = {net.name: {"IPAMConfig": {"IPv4Address": rec.config.ip} if rec.config.ip and i == 0 else None,
                       "Aliases": list(ep.aliases) or None, "NetworkID": net.id, "EndpointID": ep.link,
                       "Gateway": net.gateway, "IPAddress": ep.ip, "IPPrefixLen": net.prefix_len,
                       "MacAddress": ep.mac} for i, (net, ep) in enumerate(networks)}
    if rec.config.network_mode in ("host", "none"):
        nets = {rec.config.network_mode: {"NetworkID": "", "IPAddress": "", "Gateway": "", "MacAddress": ""}}
    first = next(iter(nets.values()), {}) if "bridge" in nets else {}
    return {"Networks": nets, "Ports": port_bindings(rec.state.ports),
            "IPAddress": first.get("IPAddress", ""), "Gateway": first.get("Gateway", ""),
            "MacAddress": first.get("MacAddress", ""),
            "SandboxKey": f"/proc/{rec.state.pid}/ns/net" if rec.state.pid else ""}


def ports_text(ports: list[dict[str, Any]]) -> str:
    """`docker ps`'s PORTS: 127.0.0.1:8080->80/tcp, 0.0.0.0:32768->53/udp."""
    return ", ".join(f"{p['host_ip'] or '0.0.0.0'}:{p['host_port']}->{p['container_port']}/{p['proto']}"
                     for p in ports)


def graph_driver(bundle: str) -> dict[str, Any]:
    """Where the container's layers are (docker inspect's GraphDriver for overlay2)."""
    import os

    overlay = os.path.join(bundle, "overlay")
    links = os.path.join(overlay, "l")
    lowers = sorted(os.listdir(links), key=int, reverse=True) if os.path.isdir(links) else []
    return {"Name": "overlay", "Data": {
        "LowerDir": ":".join(os.path.realpath(os.path.join(links, n)) for n in lowers),
        "UpperDir": os.path.join(overlay, "upper"), "WorkDir": os.path.join(overlay, "work"),
        "MergedDir": os.path.join(bundle, "rootfs")}}


def mount_json(m: Any, volume_path: Any) -> dict[str, Any]:
    propagation = next((o for o in m.options if o in _PROPAGATIONS), "rprivate" if m.type == "bind" else "")
    out: dict[str, Any] = {"Type": m.type}
    if m.type == "volume":
        out.update(Name=m.source, Source=volume_path(m.source), Driver="local")
    else:
        out["Source"] = m.source
    out.update(Destination=m.target, Mode="ro" if m.read_only else "", RW=not m.read_only,
               Propagation=propagation)
    return out


_PROPAGATIONS = ("shared", "rshared", "slave", "rslave", "private", "rprivate")


# -- docker ps ---------------------------------------------------------------------------
def human_duration(seconds: float) -> str:
    """go-units HumanDuration, as `docker ps` words ages."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def status_text(rec: ContainerRecord, now: int | None = None) -> str:
    """The STATUS column of `docker ps`."""
    st, now = rec.state, now or now_ns()

    def ago(t: int | None) -> str:
        return human_duration((now - (t or now)) / 1e9)

    s = Status(st.status)
    if s == Status.RUNNING:
        return f"Up {ago(st.started_at)}"
    if s == Status.PAUSED:
        return f"Up {ago(st.started_at)} (Paused)"
    if s == Status.RESTARTING:
        return f"Restarting ({st.exit_code}) {ago(st.finished_at)} ago"
    if s == Status.EXITED:
        return f"Exited ({st.exit_code}) {ago(st.finished_at)} ago" if st.finished_at else "Created"
    return s.value.capitalize()


def ps_row(rec: ContainerRecord, args: list[str], now: int | None = None) -> dict[str, Any]:
    """One `docker ps` line, keyed by the names `docker ps --format` uses."""
    command = " ".join(args)
    return {
        "ID": short_id(rec.id),
        "Image": rec.config.image,
        "Command": json.dumps(command if len(command) <= 20 else command[:19] + "…", ensure_ascii=False),
        "CreatedAt": rfc3339_nano(rec.state.created_at),
        "RunningFor": human_duration(((now or now_ns()) - rec.state.created_at) / 1e9) + " ago",
        "Status": status_text(rec, now),
        "State": Status(rec.state.status).value,
        "Ports": ports_text(rec.state.ports),
        "Names": rec.name,
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(rec.config.labels.items())),
        "Mounts": ",".join(m.source or m.target for m in rec.config.mounts if m.type == "volume"),
    }


PS_COLUMNS = (("CONTAINER ID", "ID"), ("IMAGE", "Image"), ("COMMAND", "Command"), ("CREATED", "RunningFor"),
              ("STATUS", "Status"), ("PORTS", "Ports"), ("NAMES", "Names"))


def table(rows: list[dict[str, Any]], columns=PS_COLUMNS) -> str:
    """Columns padded as Docker's tabwriter does (3 spaces between)."""
    widths = [max([len(title)] + [len(str(r[key])) for r in rows]) for title, key in columns]
    lines = ["   ".join(title.ljust(w) for (title, _), w in zip(columns, widths)).rstrip()]
    for r in rows:
        lines.append("   ".join(str(r[key]).ljust(w) for (_, key), w in zip(columns, widths)).rstrip())
    return "\n".join(lines)


def matches(rec: ContainerRecord, filters: list[str]) -> bool:
    """`docker ps --filter KEY=VALUE` (status, name, id, label, exited, ancestor); filters with
    the same key are ORed, different keys ANDed, as in Docker."""
    by_key: dict[str, list[str]] = {}
    for f in filters:
        key, eq, value = f.partition("=")
        if not eq or key not in _FILTERS:
            from .errors import Invalid
            raise Invalid(f"invalid filter '{f}'", "use status=, name=, id=, label=, exited= or ancestor=")
        by_key.setdefault(key, []).append(value)
    return all(any(_FILTERS[k](rec, v) for v in values) for k, values in by_key.items())


def _label(rec: ContainerRecord, value: str) -> bool:
    key, eq, want = value.partition("=")
    return key in rec.config.labels and (not eq or rec.config.labels[key] == want)


_FILTERS = {
    "status": lambda r, v: Status(r.state.status).value == v,
    "name": lambda r, v: re.search(v, r.name) is not None,
    "id": lambda r, v: r.id.startswith(v),
    "label": _label,
    "exited": lambda r, v: r.state.status == Status.EXITED and str(r.state.exit_code) == v,
    "ancestor": lambda r, v: r.config.image == v or r.config.image_id.startswith(v),
}


# -- --format ----------------------------------------------------------------------------
_ACTION = re.compile(r"{{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*}}")


def render(template: str, obj: Any) -> str:
    """Go-template-like: `{{.State.Status}}`, `{{.Name}}`, `{{json .Config}}`, `{{.}}`;
    `\\t` and `\\n` as in Docker's --format. An unknown field is an error naming it."""
    from .errors import Invalid

    def value(m: re.Match) -> str:
        v = obj
        path = [p for p in m.group(2).split(".") if p]
        for i, part in enumerate(path):
            if not isinstance(v, dict) or part not in v:
                raise Invalid(f"template: :1: can't evaluate field {part} in {'.'.join(path[:i]) or 'the object'}",
                              "see `labkit inspect NAME` for the fields")
            v = v[part]
        if m.group(1):
            return json.dumps(v, separators=(",", ":"))  # compact, as Go's json.Marshal
        if v is None:
            return "<no value>"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (dict, list)):
            return _go_print(v)
        return str(v)

    text = template.replace("\\t", "\t").replace("\\n", "\n")
    if "{{" in _ACTION.sub("", text):
        raise Invalid(f"template: unsupported action in {template!r}",
                      "labkit supports {{.Field.Path}} and {{json .Field}}")
    return _ACTION.sub(value, text)


def _go_print(v: Any) -> str:
    """How Go's fmt prints a map or slice: map[k:v] and [a b]."""
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_print(x)}" for k, x in sorted(v.items())) + "]"
    if isinstance(v, list):
        return "[" + " ".join(_go_print(x) for x in v) + "]"
    return "true" if v is True else "false" if v is False else str(v)
