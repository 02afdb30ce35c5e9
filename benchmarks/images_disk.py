#!/usr/bin/env python3
"""Disk used by N containers of one image: shared layers + one upper dir each.

    sudo .venv/bin/python benchmarks/images_disk.py [--containers 50] [--data-mb 20]

The image: labkit's busybox image plus one layer holding --data-mb MB of
incompressible data (/data/blob). Three scenarios, N containers each, every
container started and run to completion on its own overlay:

  reads only        cat a file                 -> the upper dir stays empty
  writes a file     echo … > /tmp/id           -> a few KB each
  appends to blob   echo … >> /data/blob       -> copy-up: the whole file is copied

Reported per scenario: bytes in the image's unpacked layers (counted once,
they are shared), the sum of the containers' upper dirs, the total, and what
N full copies of the root filesystem would cost instead ("copy per container",
what a chroot-style runtime without layers needs). Disk usage is allocated
blocks (like `du`), each inode once. Also: the image's blob size (compressed,
what a registry stores) and the time to create the N bundles.

Everything lives in a temp dir named labkit-bench-*, removed at the end; the
overlays are mounted only inside each container's mount namespace.
JSON goes to benchmarks/results/images_disk.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from labkit import runtime  # noqa: E402
from labkit.images import base, bundle, image, layers  # noqa: E402
from labkit.images.layerdirs import LayerDirs, disk_usage  # noqa: E402
from labkit.images.model import RunConfig  # noqa: E402
from labkit.images.store import Store  # noqa: E402

SCENARIOS = {
    "reads only": "cat /etc/os-release > /dev/null",
    "writes a file": "hostname > /tmp/id",
    "appends to blob": "hostname >> /data/blob",
}


def make_image(store: Store, tmp: str, data_mb: int) -> image.Image:
    busybox = base.busybox_image(store)
    tree = os.path.join(tmp, "data-layer")
    os.makedirs(os.path.join(tree, "data"))
    with open(os.path.join(tree, "data", "blob"), "wb") as f:
        f.write(os.urandom(data_mb << 20))
    layer = layers.diff_layer(store, None, tree, mtime=0, owner=(0, 0))
    config = base.new_config(RunConfig(cmd=["sh"]))
    config.rootfs["diff_ids"] = [*busybox.diff_ids, layer.diff_id]
    return image.write_image(store, config, [*busybox.layers, layer.descriptor()], "bench")


def scenario(img: image.Image, layer_dirs: LayerDirs, root: str, script: str, count: int) -> dict:
    bundles, create_s = [], []
    for i in range(count):
        began = time.perf_counter()
        bundles.append(bundle.create_bundle(img, os.path.join(root, f"c{i:03d}"), ["sh", "-c", script],
                                            layers=layer_dirs, hostname=f"c{i:03d}"))
        create_s.append(time.perf_counter() - began)
    for b in bundles:
        result = runtime.run(b.path)
        if result.exit_code != 0:
            raise SystemExit(f"container failed: {result.stderr}")
    uppers = [disk_usage(b.upper) for b in bundles]
    overhead = [disk_usage(b.path) - u for b, u in zip(bundles, uppers)]  # l/, work/, rootfs/, config.json
    return {"containers": count, "upper_bytes_total": sum(uppers), "upper_bytes_median": statistics.median(uppers),
            "bundle_overhead_bytes_median": statistics.median(overhead),
            "create_bundle_ms_median": statistics.median(create_s) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--data-mb", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "images_disk.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: containers and overlay layer dirs need it")
    tmp = tempfile.mkdtemp(prefix="labkit-bench-")
    os.chmod(tmp, 0o755)
    old_run_root = os.environ.get("LABKIT_RUN_ROOT")
    os.environ["LABKIT_RUN_ROOT"] = os.path.join(tmp, "run")
    try:
        store = Store(os.path.join(tmp, "images"))
        img = make_image(store, tmp, args.data_mb)
        layer_dirs = LayerDirs(os.path.join(tmp, "layers"))
        layer_dirs.ensure_all(store, img.layers, img.diff_ids)
        unpacked = sum(layer_dirs.disk_usage(d) for d in img.diff_ids)
        flat = os.path.join(tmp, "flat")
        for desc, diff_id in zip(img.layers, img.diff_ids):
            layers.apply_layer(store, desc, flat, diff_id=diff_id)
        rootfs_bytes = disk_usage(flat)
        shutil.rmtree(flat)
        results = {"image": {"layers": len(img.layers), "blob_bytes": sum(d.size for d in img.layers),
                             "unpacked_layer_bytes": unpacked, "rootfs_bytes": rootfs_bytes},
                   "scenarios": {}}
        for name, script in SCENARIOS.items():
            root = os.path.join(tmp, "containers", name.replace(" ", "-"))
            row = scenario(img, layer_dirs, root, script, args.containers)
            row["total_bytes"] = unpacked + row["upper_bytes_total"]
            row["copy_per_container_bytes"] = args.containers * rootfs_bytes
            row["saving_ratio"] = row["copy_per_container_bytes"] / row["total_bytes"]
            results["scenarios"][name] = row
            shutil.rmtree(root)
    finally:
        if old_run_root is None:
            os.environ.pop("LABKIT_RUN_ROOT", None)
        else:
            os.environ["LABKIT_RUN_ROOT"] = old_run_root
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(results, args.containers)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    print(f"\nwrote {args.out}")
    return 0


def mb(n: float) -> str:
    return f"{n / 1e6:8.2f} MB"


def print_table(results: dict, count: int) -> None:
    im = results["image"]
    print(f"image: {im['layers']} layers, blobs {mb(im['blob_bytes'])} (compressed), "
          f"unpacked layers {mb(im['unpacked_layer_bytes'])}, one rootfs copy {mb(im['rootfs_bytes'])}")
    print(f"\n{count} containers of that image:")
    head = f"{'scenario':<17}{'upper/ctr':>12}{'uppers':>12}{'layers+uppers':>15}{'copy per ctr':>15}{'saving':>8}"
    print(head)
    print("-" * len(head))
    for name, row in results["scenarios"].items():
        print(f"{name:<17}{mb(row['upper_bytes_median']):>12}{mb(row['upper_bytes_total']):>12}"
              f"{mb(row['total_bytes']):>15}{mb(row['copy_per_container_bytes']):>15}{row['saving_ratio']:>7.1f}x")
    create = statistics.median(r["create_bundle_ms_median"] for r in results["scenarios"].values())
    print(f"\ncreate_bundle (layers already unpacked): median {create:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
