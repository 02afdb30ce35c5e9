#!/usr/bin/env python3
"""Pull of one multi-layer image from a registry on loopback: labkit against skopeo.

    sudo .venv/bin/python benchmarks/pull.py [--runs 7] [--sizes 1,2,4,8,16,16]

Set-up: Debian's docker-registry on 127.0.0.1:<free port> (labkit.registry.LocalRegistry,
storage in a temp dir named labkit-registry-*), and an OCI image with one gzip
layer per --sizes entry (MB of random, so incompressible, data), pushed once
with labkit.

Rows (each pulls the same image into a new, empty destination, except "warm"):
  labkit pull (jobs=4)     labkit.registry.pull() from this Python process, 4 blobs at once
  labkit pull (jobs=1)     the same, one blob at a time
  labkit pull (new process) `python -c "…pull(…)"`: a new Python process each run, jobs=4,
                           to compare like for like with skopeo's process start (with a
                           bytecode cache even if PYTHONDONTWRITEBYTECODE is set: see
                           child_python_env)
  skopeo copy              `skopeo copy docker://… oci:DIR:tag` (a new process each run)
  labkit pull, warm        every blob already in the store: only the manifest is fetched
  skopeo copy, warm        into the OCI layout of a previous copy (skopeo skips blobs it has)

Both sides fetch the same bytes over HTTP/1.1 on loopback and verify sha256
digests; labkit also fsyncs each blob. The rows run interleaved in a new random
order every round. Reported: median, p10, p90 (ms) and the ratio of medians
against skopeo. Results go to benchmarks/results/pull.json.

Pull + unpack against `skopeo copy` + `umoci unpack` is pull_unpack.py, which
reuses this script's helpers (image, skopeo, interleaving, summary).

Safety: only loopback is contacted; the registry runs as a child of this script
and is stopped by its PID; every temp dir is named labkit-bench-* or
labkit-registry-* and removed at the end. skopeo keeps its blob-info cache in
/var/lib/containers/cache (as it always does as root).
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's labkit, even without the venv

from labkit.images.store import Store, digest_bytes  # noqa: E402
from labkit.registry import LocalRegistry, pull, push  # noqa: E402

RESULTS = os.path.join(HERE, "results", "pull.json")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def data_tar(name: str, mb: float, rng: random.Random) -> bytes:
    """An uncompressed layer tar holding one file of `mb` MB of random (incompressible) data."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = rng.randbytes(int(mb * 1_000_000))
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), 0
        tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def store_image(store: Store, tars: list[bytes], tag: str = "bench") -> dict:
    """An OCI image made of these uncompressed layer tars (gzip level 1), tagged `tag`; its descriptor."""
    layers, diff_ids = [], []
    for raw in tars:
        blob = gzip.compress(raw, compresslevel=1, mtime=0)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": store.put_blob(blob), "size": len(blob)})
        diff_ids.append(digest_bytes(raw))
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    digest, size = store.put_json(config)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": size},
                "layers": layers}
    digest, size = store.put_json(manifest)
    descriptor = {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}
    store.tag(tag, descriptor)
    return descriptor


def make_image(store: Store, sizes_mb: list[float], seed: int = 5) -> dict:
    rng = random.Random(seed)
    return store_image(store, [data_tar(f"layer{i}/data.bin", mb, rng) for i, mb in enumerate(sizes_mb)])


def write_policy(work: str) -> str:
    """A containers-policy.json for skopeo that accepts the unsigned loopback images."""
    policy = os.path.join(work, "policy.json")
    with open(policy, "w") as f:
        f.write('{"default": [{"type": "insecureAcceptAnything"}]}')
    return policy


def skopeo_copy(skopeo: str, policy: str, ref: str, dest: str, tag: str = "1") -> None:
    """`skopeo copy docker://REF oci:DEST:TAG` over plain HTTP."""
    subprocess.run([skopeo, "--policy", policy, "copy", "-q", "--src-tls-verify=false",
                    f"docker://{ref}", f"oci:{dest}:{tag}"], check=True, capture_output=True)


def interleaved(rows: dict, runs: int, between=None) -> dict[str, list[float]]:
    """One warm-up call of every row, then `runs` rounds in a new random order each: seconds per call.
    `between()` (e.g. cleaning up) runs after each round, outside the timing."""
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for fn in rows.values():
        fn()
    if between:
        between()
    for _ in range(runs):
        order = list(rows)
        random.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            rows[name]()
            samples[name].append(time.perf_counter() - t0)
        if between:
            between()
    return samples


def child_python_env(work: str) -> dict[str, str]:
    """The environment of the Python processes a benchmark starts: if this one may not write
    bytecode (PYTHONDONTWRITEBYTECODE, as in the CI shell), they get a private cache in `work`,
    filled by the warm-up, instead of compiling labkit from source on every start."""
    env = dict(os.environ)
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        env["PYTHONPYCACHEPREFIX"] = os.path.join(work, "pycache")
    return env


def machine() -> dict:
    return {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine": platform.machine(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "loadavg": os.getloadavg()}


def summarize(samples: list[float]) -> dict:
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]  # noqa: E731
    return {"median_ms": statistics.median(s) * 1000, "p10_ms": pick(0.1) * 1000, "p90_ms": pick(0.9) * 1000,
            "runs": len(s)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sizes", default="1,2,4,8,16,16", help="layer sizes in MB, comma-separated")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5 (medians over >= 5 runs)")
    skopeo = shutil.which("skopeo")
    if not skopeo:
        print("skopeo is missing: apt-get install skopeo", file=sys.stderr)
        return 2
    sizes = [float(x) for x in args.sizes.split(",")]
    work = tempfile.mkdtemp(prefix="labkit-bench-")
    policy = write_policy(work)
    env = child_python_env(work)
    counter = iter(range(10**6))
    try:
        source = Store(os.path.join(work, "source"))
        descriptor = make_image(source, sizes)
        total = sum(layer["size"] for layer in source.get_json(descriptor["digest"])["layers"])
        with LocalRegistry() as registry:
            ref = registry.reference("bench/image:1")
            push(source, "bench", ref)
            warm_store = Store(os.path.join(work, "warm-labkit"))
            pull(ref, warm_store)
            warm_layout = os.path.join(work, "warm-skopeo")
            skopeo_copy(skopeo, policy, ref, warm_layout)

            def fresh(name: str) -> str:
                return os.path.join(work, f"{name}-{next(counter)}")

            def labkit_jobs(jobs: int):
                def run() -> None:
                    dest = fresh("labkit")
                    result = pull(ref, Store(dest), jobs=jobs)
                    assert result.digest == descriptor["digest"] and len(result.fetched) == len(sizes) + 1
                return run

            def labkit_process() -> None:
                code = ("import sys; from labkit.images.store import Store; from labkit.registry import pull; "
                        "pull(sys.argv[1], Store(sys.argv[2]))")
                subprocess.run([sys.executable, "-c", code, ref, fresh("labkit")], check=True,
                               cwd=os.path.dirname(HERE), env=env)

            rows = {
                "labkit pull (jobs=4)": labkit_jobs(4),
                "labkit pull (jobs=1)": labkit_jobs(1),
                "labkit pull (new process)": labkit_process,
                "skopeo copy": lambda: skopeo_copy(skopeo, policy, ref, fresh("skopeo")),
                "labkit pull, warm": lambda: pull(ref, warm_store),
                "skopeo copy, warm": lambda: skopeo_copy(skopeo, policy, ref, warm_layout),
            }

            def clean() -> None:  # keep the disk small between rounds
                for entry in os.listdir(work):
                    if entry.startswith(("labkit-", "skopeo-")):
                        shutil.rmtree(os.path.join(work, entry), ignore_errors=True)

            samples = interleaved(rows, args.runs, clean)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {name: summarize(s) for name, s in samples.items()}
    cold, warm = results["skopeo copy"]["median_ms"], results["skopeo copy, warm"]["median_ms"]
    for name, r in results.items():
        r["ratio_vs_skopeo"] = r["median_ms"] / (warm if "warm" in name else cold)
    print(f"image: {len(sizes)} layers, {total / 1e6:.1f} MB compressed; {args.runs} runs per row; "
          f"ratio = median / skopeo's median (cold or warm)")
    print(f"{'row':26} {'median ms':>10} {'p10':>8} {'p90':>8} {'ratio':>7}")
    for name, r in results.items():
        print(f"{name:26} {r['median_ms']:10.1f} {r['p10_ms']:8.1f} {r['p90_ms']:8.1f} {r['ratio_vs_skopeo']:7.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"benchmark": "pull", **machine(),
                   "skopeo": subprocess.run([skopeo, "--version"], capture_output=True, text=True).stdout.strip(),
                   "layers_mb": sizes, "compressed_bytes": total, "results": results}, f, indent=2)
    print(f"written to {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
