"""`-v`, `--mount` and `--tmpfs` as Docker reads them, and the OCI mounts they become.

    parse_volume("/host:/ctr:ro")          bind      (source realpath'd; a missing host dir is created)
    parse_volume("name:/ctr")              volume    (named; the engine creates it if missing)
    parse_volume("/ctr")                   volume    (anonymous: source "" until the engine names it)
    parse_mount("type=bind,src=…,dst=…")   bind      (a missing source is an error, as in Docker)
    parse_tmpfs("/run:size=64m")           tmpfs
    oci_mounts(mounts, volume_path)        -> labkit.runtime.spec.Mount entries for config.json

A parsed mount is a `labkit.engine.records.Mount(type, target, source,
read_only, options)`; whatever else a flag says is kept as strings in
`options`:

    bind    one propagation mode (default "rprivate", Docker's), "nonrecursive"
            for --mount bind-recursive=disabled
    volume  "nocopy": no copy-up of the image's files into an empty volume
    tmpfs   canonical kernel options: "size=<bytes>", "mode=<octal>", "uid=…",
            "gid=…", "nr_inodes=…", "nr_blocks=…", "mpol=…" and flags such as
            "exec" (read_only carries ro/rw)

Every option is applied by the runtime or refused here with an Invalid error
that names it — never accepted and silently dropped. Refused: SELinux
relabelling (z/Z: labkit has no SELinux), recursively read-only binds
(bind-recursive=readonly), volume drivers other than local, volume labels,
options and subpaths on the fly, image mounts, and tmpfs flags the runtime
does not apply (sync, dirsync, atime, …). Docker's consistency modes
(consistent, cached, delegated) only matter on macOS; a Linux bind is always
fully consistent, which each of them allows, so they are accepted.

Paths: a bind source is made absolute (a leading "." is relative to the
current directory, as the docker CLI does) and then realpath'd at parse
time, so the record holds what the user sees now and a later symlink swap
cannot redirect the mount. Targets are cleaned like Go's path.Clean and
must be absolute and not "/".

Messages follow moby's (daemon/volume/mounts/linux_parser.go) and the docker
CLI's (opts/mount.go), each with a hint of what to type instead.
"""
from __future__ import annotations

import csv
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Sequence

from labkit.engine.errors import Invalid
from labkit.engine.names import VALID_NAME_CHARS
from labkit.engine.records import Mount
from labkit.runtime.spec import Mount as OciMount

PROPAGATIONS = ("private", "rprivate", "slave", "rslave", "shared", "rshared")
DEFAULT_PROPAGATION = "rprivate"   # moby's linuxDefaultPropagationMode
CONSISTENCY = ("default", "consistent", "cached", "delegated")
NOCOPY = "nocopy"
NONRECURSIVE = "nonrecursive"
# Docker's defaults for every tmpfs (daemon/oci_linux.go), before the user's options.
TMPFS_DEFAULTS = ("noexec", "nosuid", "nodev", DEFAULT_PROPAGATION)

_VOLUME_NAME = re.compile(r"^" + VALID_NAME_CHARS + r"+$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)   # go-units RAMInBytes
_COUNT = re.compile(r"^\d+[kmg]?$", re.IGNORECASE)                       # the kernel's memparse
_MPOL = re.compile(r"^(default|prefer|bind|interleave|local)(=(static|relative))?(:[0-9,-]+)?$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

VOLUME_HINT = "use -v /host/dir:/ctr/dir[:ro], -v NAME:/ctr/dir[:ro] or -v /ctr/dir (an anonymous volume)"
MOUNT_HINT = "e.g. --mount type=bind,source=/host/dir,target=/ctr/dir,readonly"
TMPFS_HINT = "e.g. --tmpfs /run:size=64m,mode=1777"
NAME_HINT = "volume names start with a letter or digit, then letters, digits, _ . or -; a host dir needs an absolute path"


# --- paths and names ------------------------------------------------------------------------------
def clean_path(path: str) -> str:
    """Go's path.Clean: "//a/./b/" -> "/a/b" (posixpath keeps a leading "//", Go does not)."""
    cleaned = posixpath.normpath(path) if path else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def check_target(target: str) -> str:
    """The cleaned container path of a mount: absolute and not "/"."""
    if not target:
        raise Invalid("field Target must not be empty", "say where in the container to mount it: target=/ctr/dir")
    if not target.startswith("/"):
        raise Invalid(f"invalid mount path: '{target}' mount path must be absolute",
                      f"write it from the container's root, e.g. /{target.lstrip('./')}")
    cleaned = clean_path(target)
    if cleaned == "/":
        raise Invalid("invalid specification: destination can't be '/'",
                      "mount on a directory inside the container, e.g. /data")
    return cleaned


def check_volume_name(name: str) -> str:
    """Docker's local-driver rule: [a-zA-Z0-9][a-zA-Z0-9_.-]+ (so at least 2 characters)."""
    if len(name) == 1:
        raise Invalid("volume name is too short, names should be at least two alphanumeric characters", NAME_HINT)
    if not _VOLUME_NAME.match(name):
        raise Invalid(f'"{name}" includes invalid characters for a local volume name, only '
                      f'"{VALID_NAME_CHARS}" are allowed. If you intended to pass a host directory, use absolute path',
                      NAME_HINT)
    return name


def _absolute(source: str) -> str:
    # The docker CLI turns "./x" and "../x" into absolute paths (other relative names are volumes).
    return os.path.abspath(source) if source.startswith(".") else source


def bind_source(source: str, create: bool) -> str:
    """The realpath of a bind source; a missing one is created (mode 0755) if `create`, else Invalid."""
    path = clean_path(_absolute(source))
    if not path.startswith("/"):
        raise Invalid(f"invalid mount path: '{source}' mount path must be absolute",
                      "give the host directory as an absolute path, or ./relative to the current directory")
    if not os.path.lexists(path) or (os.path.islink(path) and not os.path.exists(path)):
        if not create:
            raise Invalid(f'invalid mount config for type "bind": bind source path does not exist: {path}',
                          "create it first (mkdir -p), add bind-create-src, or use -v, which creates it")
        try:
            os.makedirs(path, 0o755, exist_ok=True)  # Docker's daemon creates -v host dirs the same way
        except OSError as err:
            raise Invalid(f"cannot create bind source {path}: {err.strerror}",
                          "create the host directory yourself, or pick another path") from None
    return os.path.realpath(path)


# --- -v / --volume ----------------------------------------------------------------------------------
_RW, _LABEL, _PROPAGATION, _COPY, _CONSISTENCY = "rw", "label", "propagation", "copy", "consistency"


def _mode_class(item: str) -> str | None:
    if item in ("ro", "rw"):
        return _RW
    if item in ("z", "Z"):
        return _LABEL
    if item in PROPAGATIONS:
        return _PROPAGATION
    if item == NOCOPY:
        return _COPY
    if item in CONSISTENCY[1:]:
        return _CONSISTENCY
    return None


def _valid_mode(mode: str) -> bool:
    """moby's linuxValidMountMode: known words, at most one of each kind."""
    if not mode:
        return True
    kinds = [_mode_class(item) for item in mode.split(",")]
    return None not in kinds and all(kinds.count(k) <= 1 for k in set(kinds))


def _invalid_spec(raw: str, why: str = "", hint: str = VOLUME_HINT) -> Invalid:
    return Invalid(f"invalid volume specification: '{raw}'" + (f": {why}" if why else ""), hint)


def parse_volume(text: str, create_missing: bool = True) -> Mount:
    """One `-v`/`--volume` value.

    `/host:/ctr[:opts]` is a bind (opts: ro|rw, a propagation mode, and the
    no-op consistency modes); a missing host directory is created, as Docker's
    daemon does (`create_missing=False` refuses it instead). `name:/ctr[:opts]`
    is a named volume (opts: ro|rw, nocopy); `/ctr` alone an anonymous one.
    """
    parts = text.split(":", 3)
    if not parts[0] or len(parts) == 4:
        raise _invalid_spec(text)
    mode = parts[2] if len(parts) == 3 else ""
    if len(parts) == 2 and _valid_mode(parts[1]):  # "/ctr:ro": a mode needs a source
        raise _invalid_spec(text, hint="a mode needs a source too: -v NAME:/ctr/dir:ro or -v /host/dir:/ctr/dir:ro")
    _check_mode(text, mode)
    items = mode.split(",") if mode else []
    read_only = "ro" in items
    if len(parts) == 1:
        return Mount("volume", _target(text, parts[0]))
    source, target = _absolute(parts[0]), _target(text, parts[1])
    if source.startswith("/"):
        if NOCOPY in items:
            raise _invalid_spec(text, "nocopy applies to volumes only", "drop nocopy: a bind shows the host dir as it is")
        propagation = next((i for i in items if i in PROPAGATIONS), DEFAULT_PROPAGATION)
        return Mount("bind", target, bind_source(source, create_missing), read_only, (propagation,))
    if any(i in PROPAGATIONS for i in items):
        raise _invalid_spec(text, "a propagation mode applies to bind mounts only",
                            "drop it, or bind a host directory: -v /host/dir:/ctr/dir:rshared")
    return Mount("volume", target, check_volume_name(source), read_only, (NOCOPY,) if NOCOPY in items else ())


def _check_mode(raw: str, mode: str) -> None:
    items = mode.split(",") if mode else []
    for label in ("z", "Z"):
        if label in items:
            raise Invalid(f"invalid mode: {mode}: SELinux relabelling ('{label}') is not supported: labkit has "
                          "no SELinux support", f"remove ':{label}' (without SELinux there is nothing to relabel)")
    if not _valid_mode(mode):
        raise Invalid(f"invalid mode: {mode}",
                      "use ro or rw, nocopy (volumes), one of " + ", ".join(PROPAGATIONS) + " (binds), "
                      "at most one of each, comma-separated")


def _target(raw: str, target: str) -> str:
    try:
        return check_target(target)
    except Invalid as err:
        raise _invalid_spec(raw, err.what, err.hint) from None


# --- --mount ------------------------------------------------------------------------------------------
_FLAG_KEYS = ("readonly", "ro", "volume-nocopy", "bind-nonrecursive", "bind-create-src")
_UNSUPPORTED_KEYS = {
    "volume-label": "volumes made on the fly get no labels here: `labkit volume create --label K=V NAME` first",
    "volume-opt": "the local driver's options (other filesystems, NFS) are not supported",
    "volume-subpath": "mounting part of a volume is not supported: mount the whole volume",
    "image-subpath": "image mounts are not supported",
}


def _bool(key: str, value: str | None) -> bool:
    if value is None or value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise Invalid(f"invalid value for '{key}': invalid boolean value (\"{value}\"): must be one of \"true\", "
                  "\"1\", \"false\", or \"0\" (default \"true\")", f"write {key} alone, or {key}=false")


def _mount_fields(text: str) -> list[tuple[str, str | None]]:
    """The CSV fields of a --mount value as (lowercased key, value or None), whitespace refused."""
    try:
        fields = next(csv.reader([text], strict=True), [])
    except csv.Error as err:
        raise Invalid(f"cannot parse --mount value: {err}", MOUNT_HINT) from None
    out = []
    for field in fields:
        key, eq, value = field.partition("=")
        if key.strip() != key:
            raise Invalid(f"invalid option '{key.strip()}' in '{field}': option should not have whitespace", MOUNT_HINT)
        if eq:
            if not value.strip():
                raise Invalid(f"invalid value for '{key}': value is empty", f"give {key} a value, or leave it out")
            if value.strip() != value:
                raise Invalid(f"invalid value for '{key}' in '{field}': value should not have whitespace", MOUNT_HINT)
        elif key.lower() not in _FLAG_KEYS:
            raise Invalid(f"invalid field '{field}' must be a key=value pair", MOUNT_HINT)
        out.append((key.lower(), value if eq else None))
    return out


class _MountArgs:
    """What one --mount said, before it is checked against its type."""

    def __init__(self) -> None:
        self.type, self.source, self.target, self.read_only = "volume", "", "", False
        self.propagation: str | None = None
        self.nonrecursive = self.create_src = self.nocopy = False
        self.size: int | None = None
        self.mode: int | None = None
        self.families: set[str] = set()   # bind, volume, tmpfs: which *-options were given

    def set(self, key: str, value: str | None) -> None:
        v = value or ""
        if key == "type":
            self.type = v.lower()
        elif key in ("source", "src"):
            self.source = _absolute(v)
        elif key in ("target", "dst", "destination"):
            self.target = v
        elif key in ("readonly", "ro"):
            self.read_only = _bool(key, value)
        elif key == "consistency":
            _consistency(v)
        elif key.startswith("bind-"):
            self._bind(key, value)
        elif key.startswith("volume-") and key not in _UNSUPPORTED_KEYS:
            self._volume(key, value)
        elif key.startswith("tmpfs-"):
            self._tmpfs(key, v)
        elif key in _UNSUPPORTED_KEYS:
            raise Invalid(f"option '{key}' is not supported by labkit", _UNSUPPORTED_KEYS[key])
        else:
            raise Invalid(f"unknown option '{key}' in '{key}={v}'" if value is not None else f"unknown option '{key}'",
                          "known: type, source/src, target/dst/destination, readonly/ro, bind-propagation, "
                          "bind-recursive, bind-create-src, volume-nocopy, volume-driver, tmpfs-size, tmpfs-mode")

    def _bind(self, key: str, value: str | None) -> None:
        self.families.add("bind")
        v = (value or "").lower()
        if key == "bind-propagation":
            if v not in PROPAGATIONS:
                raise Invalid(f"invalid propagation mode: {value}", "use one of " + ", ".join(PROPAGATIONS))
            self.propagation = v
        elif key == "bind-nonrecursive":
            raise Invalid("bind-nonrecursive is deprecated, use bind-recursive=disabled instead",
                          "write bind-recursive=disabled")
        elif key == "bind-recursive":
            _bind_recursive(self, v, value or "")
        elif key == "bind-create-src":
            self.create_src = _bool(key, value)
        else:
            raise Invalid(f"unknown option '{key}'", "bind options: bind-propagation, bind-recursive, bind-create-src")

    def _volume(self, key: str, value: str | None) -> None:
        self.families.add("volume")
        if key == "volume-nocopy":
            self.nocopy = _bool(key, value)
        elif key == "volume-driver":
            if value != "local":
                raise Invalid(f"volume driver '{value}' is not supported by labkit", "leave volume-driver out (local)")
        else:
            raise Invalid(f"unknown option '{key}'", "volume options: volume-nocopy, volume-driver=local")

    def _tmpfs(self, key: str, value: str) -> None:
        self.families.add("tmpfs")
        if key == "tmpfs-size":
            self.size = _size_or_none(value)
            if self.size is None:
                raise Invalid(f"invalid value for {key}: {value}", "a size such as 64m, 1g or 65536k")
        elif key == "tmpfs-mode":
            self.mode = _octal_or_none(value)
            if self.mode is None:
                raise Invalid(f"invalid value for {key}: {value}", "an octal mode such as 1777 or 700")
        else:
            raise Invalid(f"unknown option '{key}'", "tmpfs options: tmpfs-size, tmpfs-mode")


def _consistency(value: str) -> None:
    if value.lower() not in CONSISTENCY:
        raise Invalid(f"invalid consistency: {value}", "use one of " + ", ".join(CONSISTENCY) + " (no-ops on Linux)")


def _bind_recursive(args: _MountArgs, v: str, raw: str) -> None:
    if v == "disabled":
        args.nonrecursive = True
    elif v == "readonly":
        raise Invalid("bind-recursive=readonly is not supported by labkit: its runtime makes a read-only bind "
                      "read-only at the top only, not in the mounts below it",
                      "use bind-recursive=writable (what labkit does), or leave it out")
    elif v not in ("enabled", "writable"):
        raise Invalid(f'invalid value for bind-recursive: {raw} (must be "enabled", "disabled", "writable", '
                      'or "readonly")', "leave it out for the default (enabled)")


def parse_mount(text: str) -> Mount:
    """One `--mount` value: comma-separated key=value fields, type volume unless said otherwise."""
    text = text.strip()
    if not text:
        raise Invalid("value is empty", MOUNT_HINT)
    args = _MountArgs()
    for key, value in _mount_fields(text):
        args.set(key, value)
    mixed = sorted(args.families - {args.type})
    if mixed:
        raise Invalid(f"cannot mix '{mixed[0]}-*' options with mount type '{args.type}'",
                      f"drop the {mixed[0]}-* options, or use type={mixed[0]}")
    try:
        target = check_target(args.target)
    except Invalid as err:
        raise Invalid(f'invalid mount config for type "{args.type}": {err.what}', err.hint) from None
    if args.type == "bind":
        return _bind_mount(args, target)
    if args.type == "volume":
        source = check_volume_name(args.source) if args.source else ""
        return Mount("volume", target, source, args.read_only, (NOCOPY,) if args.nocopy else ())
    if args.type == "tmpfs":
        return _tmpfs_mount(args, target)
    if args.type in ("image", "npipe", "cluster"):
        raise Invalid(f"mount type '{args.type}' is not supported by labkit", "use type=bind, volume or tmpfs")
    raise Invalid(f'invalid mount config for type "{args.type}": mount type unknown', "use type=bind, volume or tmpfs")


def _bind_mount(args: _MountArgs, target: str) -> Mount:
    if not args.source:
        raise Invalid('invalid mount config for type "bind": field Source must not be empty',
                      "name the host path: source=/host/dir")
    options = [args.propagation or DEFAULT_PROPAGATION] + ([NONRECURSIVE] if args.nonrecursive else [])
    return Mount("bind", target, bind_source(args.source, args.create_src), args.read_only, tuple(options))


def _tmpfs_mount(args: _MountArgs, target: str) -> Mount:
    if args.source:
        raise Invalid('invalid mount config for type "tmpfs": field Source must not be specified',
                      "a tmpfs has no source: drop source=")
    options = ([f"size={args.size}"] if args.size else []) + ([f"mode={args.mode:o}"] if args.mode else [])
    return Mount("tmpfs", target, "", args.read_only, tuple(options))


# --- --tmpfs and tmpfs options ------------------------------------------------------------------------
# flag: the kernel flag it sets or clears (options sharing one collide: the last wins), as moby's table.
# Only flags labkit's runtime applies (labkit.rootfs.parse_mount_options); moby knows a few more.
_TMPFS_FLAGS = {
    "ro": "rdonly", "rw": "rdonly", "nosuid": "nosuid", "suid": "nosuid", "nodev": "nodev", "dev": "nodev",
    "noexec": "noexec", "exec": "noexec", "noatime": "noatime", "relatime": "relatime",
    "strictatime": "strictatime", **{p: "propagation" for p in PROPAGATIONS},
}
_NOT_APPLIED = ("sync", "async", "dirsync", "remount", "mand", "nomand", "atime", "diratime", "nodiratime",
                "norelatime", "nostrictatime", "bind", "rbind", "unbindable", "runbindable")
_TMPFS_DATA = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol")


def _size_or_none(text: str) -> int | None:
    """go-units RAMInBytes: "64m", "1.5g", "64MiB", "65536" -> bytes (binary units)."""
    m = _SIZE.match(text)
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]) if m else None


def _octal_or_none(text: str) -> int | None:
    try:
        mode = int(text, 8)
    except ValueError:
        return None
    return mode if 0 <= mode <= 0o7777 else None


def _tmpfs_data(key: str, value: str) -> str:
    """One key=value tmpfs option in its canonical form, or Invalid."""
    canonical: str | None = None
    if key == "size":
        size = _size_or_none(value)
        canonical = value if re.fullmatch(r"\d{1,3}%", value) else None if size is None else str(size)
    elif key == "mode":
        mode = _octal_or_none(value)
        canonical = None if mode is None else f"{mode:o}"
    elif key in ("uid", "gid"):
        canonical = value if value.isdigit() else None
    elif key in ("nr_inodes", "nr_blocks"):
        canonical = value if _COUNT.match(value) else None
    elif key == "mpol":
        canonical = value if _MPOL.match(value) else None
    if canonical is None:
        raise Invalid(f'invalid tmpfs option "{key}={value}"',
                      {"size": "a size such as 64m, 1g or 50%", "mode": "an octal mode such as 1777"}
                      .get(key, "see tmpfs(5) for its values"))
    return f"{key}={canonical}"


def merge_tmpfs_options(options: Iterable[str]) -> list[str]:
    """moby's MergeTmpfsOptions: later options win over earlier ones of the same flag or key.

    Unknown options, and flags labkit's runtime would not apply, are Invalid.
    """
    seen: set[str] = set()
    merged: list[str] = []
    for option in reversed([o for o in options if o and o != "defaults"]):
        if option in _TMPFS_FLAGS:
            key = _TMPFS_FLAGS[option]
        elif option in _NOT_APPLIED:
            raise Invalid(f'tmpfs option "{option}" is not supported by labkit (its runtime does not apply it)',
                          "remove it; supported flags: " + ", ".join(sorted(set(_TMPFS_FLAGS) - set(PROPAGATIONS))))
        else:
            key, eq, value = option.partition("=")
            if not eq or key not in _TMPFS_DATA:
                raise Invalid(f'invalid tmpfs option "{option}"',
                              "use size=, mode=, uid=, gid=, nr_inodes=, nr_blocks=, mpol= or a mount flag "
                              "such as exec, ro")
            option = _tmpfs_data(key, value)
        if key not in seen:
            seen.add(key)
            merged.insert(0, option)
    return merged


def parse_tmpfs(text: str) -> Mount:
    """One `--tmpfs /path[:opts]` value: opts are the kernel's tmpfs options, comma-separated."""
    target, _, opts = text.partition(":")
    try:
        target = check_target(target)
    except Invalid as err:
        raise Invalid(f"invalid tmpfs mount '{text}': {err.what}", TMPFS_HINT) from None
    merged = merge_tmpfs_options(opts.split(",") if opts else [])
    read_only = "ro" in merged
    return Mount("tmpfs", target, "", read_only, tuple(o for o in merged if o not in ("ro", "rw")))


# --- checks across mounts ---------------------------------------------------------------------------
def check_unique_targets(mounts: Iterable[Mount]) -> None:
    """Docker refuses two mounts at one container path ("Duplicate mount point")."""
    seen: set[str] = set()
    for m in mounts:
        target = clean_path(m.target)
        if target in seen:
            raise Invalid(f"Duplicate mount point: {target}", "mount one thing per container path")
        seen.add(target)


def propagation(m: Mount) -> str:
    """A bind's propagation mode (Docker's default rprivate for one that says none)."""
    return next((o for o in m.options if o in PROPAGATIONS), DEFAULT_PROPAGATION)


def root_propagation(mounts: Iterable[Mount]) -> str | None:
    """The linux.rootfsPropagation binds need, by moby's rule (daemon/oci_linux.go).

    With labkit's default (every mount made private first) a [r]shared or
    [r]slave bind would share events only inside the container. So a shared
    bind needs the root "shared", a slave one "rslave"; None: leave it unset.
    """
    modes = {propagation(m) for m in mounts if m.type == "bind"}
    if modes & {"shared", "rshared"}:
        return "shared"
    if modes & {"slave", "rslave"}:
        return "rslave"
    return None


# --- to the OCI runtime spec --------------------------------------------------------------------------
def oci_mounts(mounts: Sequence[Mount], volume_path: Callable[[str], str]) -> list[OciMount]:
    """The config.json `mounts` entries, parents before children (moby sorts them by depth).

    bind    type bind, options rbind (bind if nonrecursive), its propagation, ro if read-only
    volume  the same, from volume_path(name): the volume's _data dir (anonymous ones must be named first)
    tmpfs   type tmpfs, source tmpfs, options Docker's noexec,nosuid,nodev,rprivate merged with the record's
    """
    out = [_oci_mount(m, volume_path) for m in mounts]
    return sorted(out, key=lambda m: len(clean_path(m.destination).split("/")))  # stable: same depth keeps order


def _oci_mount(m: Mount, volume_path: Callable[[str], str]) -> OciMount:
    if m.type == "tmpfs":
        options = merge_tmpfs_options([*TMPFS_DEFAULTS, *m.options, *(["ro"] if m.read_only else [])])
        return OciMount(destination=m.target, type="tmpfs", source="tmpfs", options=options)
    if m.type == "bind":
        source = m.source
    elif m.type == "volume":
        if not m.source:
            raise Invalid(f"the anonymous volume at {m.target} has no name yet",
                          "create it first (VolumeStore.create(anonymous=True)) and put its name in the mount")
        source = volume_path(m.source)
    else:
        raise Invalid(f"mount type '{m.type}' is not supported by labkit", "use bind, volume or tmpfs")
    options = ["bind" if NONRECURSIVE in m.options else "rbind", propagation(m)] + (["ro"] if m.read_only else [])
    return OciMount(destination=m.target, type="bind", source=source, options=options)
