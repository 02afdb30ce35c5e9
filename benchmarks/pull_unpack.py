#!/usr/bin/env python3
"""Pull + unpack of one multi-layer image from a registry on loopback: labkit against skopeo + umoci.

    sudo .venv/bin/python benchmarks/pull_unpack.py [--runs 7] [--files 3000] [--sizes 1,2,4,8,16,16]

Set-up: Debian's docker-registry on 127.0.0.1:<free port> (labkit.registry.LocalRegistry),
and one OCI image (gzip layers), pushed once with labkit:
  1. a tree of --files files like a distribution's /usr (~100 dirs, small to 1 MB files,
     half text and half random bytes, symlinks, hard links, a few setuid binaries,
     some files owned by 1000:100),
  2. one layer per --sizes entry holding a file of that many MB of random data (pull.py's image),
  3. a layer of changes to layer 1: whiteouts of ~5% of its files and of a whole directory,
     an opaque directory refilled, rewritten files, a directory replaced by a file.

Rows (each into a new, empty store/layout and a new rootfs):
  labkit pull+unpack (in-process)   labkit.registry.pull (jobs=4), then every layer applied in order
                                    onto one rootfs (labkit.images.layers.apply_layer, FLAT mode, diff_ids
                                    checked) — pull_unpack_labkit.py's functions, from this Python
  labkit pull+unpack (new process)  the same as `python benchmarks/pull_unpack_labkit.py REF STORE ROOTFS`:
                                    a new interpreter each run, like skopeo's and umoci's
  skopeo copy + umoci unpack        `skopeo copy docker://REF oci:DIR:1`, then
                                    `umoci unpack --image DIR:1 BUNDLE` (two new processes)
  labkit unpack only (in-process)   the unpack alone, from a store pulled once before
  umoci unpack only                 `umoci unpack` alone, from a layout copied once before

umoci 0.4.7 (Debian 12): `umoci unpack [--rootless] [--uid-map/--gid-map] --image PATH[:TAG] BUNDLE`;
run as root without --rootless, so it restores owners as labkit does. Besides BUNDLE/rootfs it writes
config.json, umoci.json and an mtree manifest of the whole rootfs (sha256 of every file), work labkit
does not do; it verifies blob digests while reading and each layer's diff_id, as labkit does.

After every round, each row's rootfs is compared with umoci's: the same paths, and for each the
type, mode, owner, mtime (seconds), size, content (sha256), symlink target, xattrs and hard-link
groups (umoci's config.json, umoci.json and *.mtree are outside rootfs and ignored). Any
difference stops the benchmark.

The rows run interleaved in a new random order every round, after one warm-up round. Reported:
median, p10, p90 (ms) and the ratio of medians labkit / peer (pull+unpack rows against skopeo +
umoci, unpack rows against umoci unpack). Results go to benchmarks/results/pull_unpack.json.
Helpers (image making, skopeo, interleaving, summary) are pull.py's.

Safety: only loopback is contacted; the registry runs as a child of this script and is stopped
by its PID; every temp dir is named labkit-bench-* or labkit-registry-* and removed at the end.
skopeo keeps its blob-info cache in /var/lib/containers/cache (as it always does as root).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's labkit, even without the venv
sys.path.insert(0, HERE)

import pull as bench  # noqa: E402  (benchmarks/pull.py: the helpers)
from pull_unpack_labkit import pull_unpack, unpack  # noqa: E402

from labkit.images.layers import list_layer  # noqa: E402
from labkit.images.store import Store  # noqa: E402
from labkit.registry import LocalRegistry, pull, push  # noqa: E402

RESULTS = os.path.join(HERE, "results", "pull_unpack.json")
MTIME = 1_700_000_000
GONE_DIR, OPAQUE_DIR, REPLACED_DIR = "usr/share/doc/pkg001", "usr/lib/pkg002", "usr/share/doc/pkg003"
PEERS = {
    "labkit pull+unpack (in-process)": "skopeo copy + umoci unpack",
    "labkit pull+unpack (new process)": "skopeo copy + umoci unpack",
    "skopeo copy + umoci unpack": "skopeo copy + umoci unpack",
    "labkit unpack only (in-process)": "umoci unpack only",
    "umoci unpack only": "umoci unpack only",
}


# --- the image --------------------------------------------------------------------------------------
class _Tar:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
            owner: tuple[int, int] = (0, 0), mtime: int = MTIME, link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.linkname = kind, mode, mtime, link
        info.uid, info.gid = owner
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        self.tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    def dir(self, name: str, mode: int = 0o755, **kw) -> None:
        self.add(name, tarfile.DIRTYPE, mode=mode, **kw)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def tree_layers(files: int, rng: random.Random) -> tuple[bytes, bytes]:
    """The /usr-like tree and the layer of changes to it (uncompressed tars)."""
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(2, 10)))
             for _ in range(2000)]
    text = b" ".join(rng.choice(words) for _ in range(400_000))  # ~2.4 MB of text to slice from

    def content(size: int) -> bytes:
        if rng.random() < 0.5:
            return rng.randbytes(size)
        start = rng.randrange(max(1, len(text) - size))
        return text[start:start + size]

    def size() -> int:
        r = rng.random()
        return rng.randrange(0, 4096) if r < 0.7 else rng.randrange(4096, 65536) if r < 0.97 \
            else rng.randrange(65536, 1 << 20)

    dirs = ["usr", "usr/bin", "usr/lib", "usr/share", "usr/share/doc", "etc", "var", "var/lib",
            "data"]  # data/: where the data layers add their files (their tars have no entry for it)
    dirs += [f"usr/lib/pkg{i:03d}" for i in range(60)] + [f"usr/share/doc/pkg{i:03d}" for i in range(30)]
    dirs += [f"var/lib/app{i}" for i in range(5)]
    base = _Tar()
    placed: dict[str, list[str]] = {d: [] for d in dirs}
    regular: list[str] = []
    for d in dirs:
        base.dir(d, owner=(1000, 100) if d.startswith("var/lib/") else (0, 0))
    for i in range(files):
        d = rng.choice(dirs)
        name = f"{d}/f{i:05d}" + rng.choice([".so", ".txt", ".py", "", ".conf"])
        placed[d].append(name)
        r = rng.random()
        if r < 0.05 and regular:
            base.add(name, tarfile.SYMTYPE, link=os.path.relpath(rng.choice(regular), d), mode=0o777)
        elif r < 0.07 and regular:
            base.add(name, tarfile.LNKTYPE, link=rng.choice(regular))
        else:
            mode = 0o755 if d == "usr/bin" else 0o644
            if d == "usr/bin" and rng.random() < 0.03:
                mode = 0o4755
            base.add(name, data=content(size()), mode=mode,
                     owner=(1000, 100) if d.startswith("var/lib/") else (0, 0), mtime=MTIME - rng.randrange(10**6))
            regular.append(name)

    changes = _Tar()
    gone_dir, opaque_dir, replaced_dir = GONE_DIR, OPAQUE_DIR, REPLACED_DIR
    touched = sorted({"usr/share/doc", "usr/lib"})
    for d in touched:
        changes.dir(d, mtime=MTIME + 100)
    changes.add(f"usr/share/doc/.wh.{os.path.basename(gone_dir)}")
    changes.dir(opaque_dir, mtime=MTIME + 100)
    changes.add(f"{opaque_dir}/.wh..wh..opq")
    for j in range(3):
        changes.add(f"{opaque_dir}/new{j}.so", data=content(size()), mtime=MTIME + 100)
    changes.add(replaced_dir, data=b"a file now\n", mtime=MTIME + 100)  # replaces the directory
    special = (gone_dir, opaque_dir, replaced_dir)
    for d in dirs:
        if d.startswith(special) or not placed[d]:
            continue
        victims = [n for n in placed[d] if rng.random() < 0.05]
        rewritten = [n for n in placed[d] if n in regular and n not in victims and rng.random() < 0.02]
        if not victims and not rewritten:
            continue
        if d not in touched:
            changes.dir(d, mtime=MTIME + 100, owner=(1000, 100) if d.startswith("var/lib/") else (0, 0))
        for n in victims:
            changes.add(f"{d}/.wh.{os.path.basename(n)}")
        for n in rewritten:
            changes.add(n, data=content(size()), mtime=MTIME + 200)
    return base.bytes(), changes.bytes()


def make_image(store: Store, files: int, sizes: list[float], seed: int = 5) -> dict:
    rng = random.Random(seed)
    tree, changes = tree_layers(files, rng)
    data = [bench.data_tar(f"data/layer{i}.bin", mb, rng) for i, mb in enumerate(sizes)]
    return bench.store_image(store, [tree, *data, changes])


# --- comparing trees ------------------------------------------------------------------------------
def listing(root: str) -> tuple[dict[str, tuple], set[tuple[str, ...]]]:
    """Every entry below root (not root itself): type, mode, owner, mtime, size, content or target,
    xattrs; and the hard-link groups."""
    entries: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            what = ""
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what = hashlib.file_digest(f, "sha256").hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            xattrs = tuple(sorted((a, os.getxattr(path, a, follow_symlinks=False))
                                  for a in os.listxattr(path, follow_symlinks=False)))
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            entries[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime), size, what, xattrs)
    return entries, {tuple(sorted(group)) for group in inodes.values() if len(group) > 1}


def differences(a: str, b: str, limit: int = 10) -> list[str]:
    (ea, la), (eb, lb) = listing(a), listing(b)
    out = [f"only in {a}: {p}" for p in sorted(ea.keys() - eb.keys())]
    out += [f"only in {b}: {p}" for p in sorted(eb.keys() - ea.keys())]
    out += [f"{p}: {ea[p]} != {eb[p]}" for p in sorted(ea.keys() & eb.keys()) if ea[p] != eb[p]]
    if la != lb:
        out.append(f"hard-link groups differ: {sorted(la ^ lb)[:3]}")
    return out[:limit]


def check_changes_applied(root: str) -> None:
    """The last layer's whiteouts took effect (identical trees alone would not show that both did)."""
    assert not os.path.lexists(os.path.join(root, GONE_DIR)), "the whited-out directory is still there"
    assert sorted(os.listdir(os.path.join(root, OPAQUE_DIR))) == ["new0.so", "new1.so", "new2.so"], \
        "the opaque directory kept lower entries"
    assert stat.S_ISREG(os.lstat(os.path.join(root, REPLACED_DIR)).st_mode), "the directory was not replaced"


def summary_of(root: str) -> dict:
    entries, links = listing(root)
    kinds = [e[0][0] for e in entries.values()]
    return {"entries": len(entries), "files": kinds.count("-"), "dirs": kinds.count("d"),
            "symlinks": kinds.count("l"), "hard_link_groups": len(links),
            "bytes": sum(e[4] for e in entries.values() if e[0][0] == "-")}


# --- the benchmark ----------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="measured rounds (>= 5)")
    parser.add_argument("--files", type=int, default=3000, help="files in the tree layer")
    parser.add_argument("--sizes", default="1,2,4,8,16,16", help="data layer sizes in MB, comma-separated")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5 (medians over >= 5 runs)")
    if os.geteuid() != 0:
        print("run as root: both sides restore file owners", file=sys.stderr)
        return 1
    skopeo, umoci = shutil.which("skopeo"), shutil.which("umoci")
    if not (skopeo and umoci):
        print("skopeo and umoci are needed: apt-get install skopeo umoci", file=sys.stderr)
        return 2
    sizes = [float(x) for x in args.sizes.split(",") if x]
    work = tempfile.mkdtemp(prefix="labkit-bench-")
    policy = bench.write_policy(work)
    env = bench.child_python_env(work)
    counter = iter(range(10**6))
    last: dict[str, str] = {}  # row -> the rootfs it made this round
    checked = 0

    def fresh(row: str, kind: str) -> str:
        path = os.path.join(work, f"run-{kind}-{next(counter)}")
        last[row] = path
        return path

    try:
        source = Store(os.path.join(work, "source"))
        descriptor = make_image(source, args.files, sizes)
        blobs = source.get_json(descriptor["digest"])["layers"]
        whiteouts = sum(os.path.basename(m.name).startswith(".wh.") for m in list_layer(source, blobs[-1]))
        with LocalRegistry() as registry:
            ref = registry.reference("bench/unpack:1")
            push(source, "bench", ref)
            warm_store = Store(os.path.join(work, "warm-labkit"))
            warm_tag = pull(ref, warm_store).tag
            warm_layout = os.path.join(work, "warm-skopeo")
            bench.skopeo_copy(skopeo, policy, ref, warm_layout)

            def umoci_unpack(layout: str, bundle: str) -> None:
                subprocess.run([umoci, "unpack", "--image", f"{layout}:1", bundle], check=True, capture_output=True)

            def labkit_in_process() -> None:
                path = fresh("labkit pull+unpack (in-process)", "labkit")
                pull_unpack(ref, os.path.join(path, "store"), os.path.join(path, "rootfs"))

            def labkit_new_process() -> None:
                path = fresh("labkit pull+unpack (new process)", "labkit")
                subprocess.run([sys.executable, os.path.join(HERE, "pull_unpack_labkit.py"), ref,
                                os.path.join(path, "store"), os.path.join(path, "rootfs")], check=True, env=env)

            def skopeo_umoci() -> None:
                path = fresh("skopeo copy + umoci unpack", "umoci")
                os.mkdir(path)  # skopeo makes the layout dir, not its parent
                bench.skopeo_copy(skopeo, policy, ref, os.path.join(path, "layout"))
                umoci_unpack(os.path.join(path, "layout"), os.path.join(path, "bundle"))

            def labkit_unpack_only() -> None:
                path = fresh("labkit unpack only (in-process)", "labkit")
                unpack(warm_store, warm_tag, os.path.join(path, "rootfs"))

            def umoci_unpack_only() -> None:
                umoci_unpack(warm_layout, os.path.join(fresh("umoci unpack only", "umoci"), "bundle"))

            rows = {
                "labkit pull+unpack (in-process)": labkit_in_process,
                "labkit pull+unpack (new process)": labkit_new_process,
                "skopeo copy + umoci unpack": skopeo_umoci,
                "labkit unpack only (in-process)": labkit_unpack_only,
                "umoci unpack only": umoci_unpack_only,
            }

            def rootfs_of(row: str) -> str:
                sub = "bundle/rootfs" if "umoci" in row else "rootfs"
                return os.path.join(last[row], sub)

            tree: dict = {}

            def check_and_clean() -> None:
                nonlocal checked
                reference = rootfs_of("umoci unpack only")
                if not tree:
                    check_changes_applied(reference)
                    tree.update(summary_of(reference))
                for row in rows:
                    diff = differences(rootfs_of(row), reference)
                    if diff:
                        raise SystemExit(f"{row} made a different tree than umoci unpack:\n  " + "\n  ".join(diff))
                checked += 1
                for entry in os.listdir(work):  # keep the disk small between rounds
                    if entry.startswith("run-"):
                        shutil.rmtree(os.path.join(work, entry))

            load_before = os.getloadavg()
            samples = bench.interleaved(rows, args.runs, check_and_clean)
            load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {name: bench.summarize(s) for name, s in samples.items()}
    for name, r in results.items():
        r["peer"] = PEERS[name]
        r["ratio_vs_peer"] = r["median_ms"] / results[PEERS[name]]["median_ms"]
    compressed = sum(b["size"] for b in blobs)
    print(f"image: {len(blobs)} layers, {compressed / 1e6:.1f} MB compressed, {whiteouts} whiteouts; rootfs: {tree['entries']} entries "
          f"({tree['files']} files, {tree['dirs']} dirs, {tree['symlinks']} symlinks), {tree['bytes'] / 1e6:.1f} MB; "
          f"{args.runs} runs per row; trees identical to umoci's in all {checked} checks")
    print(f"load average {load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} CPUs; "
          "ratio = median / the peer row's median")
    print(f"{'row':34} {'median ms':>10} {'p10':>8} {'p90':>8} {'ratio':>7}  peer")
    for name, r in results.items():
        print(f"{name:34} {r['median_ms']:10.1f} {r['p10_ms']:8.1f} {r['p90_ms']:8.1f} "
              f"{r['ratio_vs_peer']:7.2f}  {r['peer'] if r['peer'] != name else '-'}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"benchmark": "pull_unpack", **bench.machine(), "loadavg_before": load_before,
                   "loadavg_after": load_after,
                   "skopeo": subprocess.run([skopeo, "--version"], capture_output=True, text=True).stdout.strip(),
                   "umoci": subprocess.run([umoci, "--version"], capture_output=True, text=True).stdout.strip(),
                   "files": args.files, "layers_mb": sizes, "layers": len(blobs), "compressed_bytes": compressed, "whiteouts": whiteouts,
                   "rootfs": tree, "tree_checks_identical": checked, "results": results}, f, indent=2)
        f.write("\n")
    print(f"written to {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
