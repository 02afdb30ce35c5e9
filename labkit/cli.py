"""Command lines, kept thin: `labkit …` (the lab) and `labkit-runc …` (OCI runtime CLI)."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from . import capabilities
from .errors import LabkitError
from .runtime.spec import Spec, default_spec


# --- labkit -----------------------------------------------------------------------------
def _bundle_for(args: argparse.Namespace) -> tuple[str, str | None]:
    """A bundle dir for `args.target`: itself if it has config.json and nothing is changed,
    else a temp one (around the bundle's rootfs, a rootfs directory or an image); and the
    temp directory to remove afterwards, if any."""
    target = os.path.abspath(args.target)
    is_bundle = os.path.exists(os.path.join(target, "config.json"))
    if not is_bundle and not os.path.isdir(target):
        image = _image_bundle(args)
        if image:
            return image, os.path.dirname(image)
        raise LabkitError(f"{args.target} is neither a bundle, a root filesystem directory nor an image in "
                          f"{_store().root}",
                          "pass a directory with config.json, a rootfs (see labkit.rootfs.build_busybox_rootfs), "
                          "or an image name from `labkit images` (`labkit pull REF` first)")
    changes = args.cmd or args.hostname or args.cap_add or args.cap_drop or args.privileged
    if is_bundle and not changes:
        return target, None
    if is_bundle:
        spec = Spec.load(target)
        spec.root.path = spec.rootfs_path(target)
    else:
        spec = default_spec(["sh"], rootfs=target, hostname="labkit")
    if args.cmd:
        spec.process.args = args.cmd
    if args.hostname:
        spec.hostname = args.hostname
    _adjust_caps(spec, args)
    spec.validate()  # before the temp dir exists: nothing to clean up on a bad spec
    bundle = tempfile.mkdtemp(prefix="labkit-bundle-")
    spec.save(bundle)
    return bundle, bundle


def _adjust_caps(spec: Spec, args: argparse.Namespace) -> None:
    if args.cap_add or args.cap_drop or args.privileged:
        held = (spec.process.capabilities or {}).get("bounding", [])
        kept = capabilities.adjusted(held, ["ALL"] if args.privileged else args.cap_add, args.cap_drop)
        spec.process.capabilities = capabilities.oci_sets(kept)


def _store():
    from .registry.pull import default_store  # the image commands' imports stay off `labkit run DIR`

    return default_store()


def _image_bundle(args: argparse.Namespace) -> str | None:
    """A temp bundle running the image `args.target` from the store (its overlay rootfs is
    mounted inside the container's mount namespace, so deleting the bundle is all the cleanup)."""
    from .images.bundle import create_bundle
    from .images.image import open_image

    store = _store()
    if args.target not in store.tags():
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="labkit-bundle-"), "bundle")
    try:
        create_bundle(open_image(store, args.target), path, args=args.cmd or None,
                      hostname=args.hostname or "labkit", edit=lambda spec: _adjust_caps(spec, args))
    except BaseException:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        raise
    return path


def cmd_pull(args: argparse.Namespace) -> int:
    from .registry.pull import pull

    print(pull(args.reference, _store(), platform=args.platform, insecure=args.insecure_registry))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .registry.push import push

    print(push(_store(), args.source, args.reference, insecure=args.insecure_registry))
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    tags = _store().tags()
    print(f"{'IMAGE':<50} DIGEST")
    for name, digest in sorted(tags.items()):
        print(f"{name:<50} {digest[:19]}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .images.build import build

    print(build(args.context, _store(), tag=args.tag, containerfile=args.file))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Foreground, as `runc run`: this process creates the container (in-process, no monitor
    to start), is its reaper, forwards signals to it, and returns its exit code."""
    from .runtime import init

    bundle, temporary = _bundle_for(args)
    container_id = args.name or "run-" + os.urandom(6).hex()  # as random as uuid4().hex[:12]
    if not args.interactive:  # the container inherits our stdin: give it nothing to read
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    try:
        return init.run_attached(container_id, bundle)
    except init.ExecError as err:  # like `docker run`: 127 not found, 126 not executable
        print(f"labkit: {err}", file=sys.stderr)
        return err.exit_code
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor  # imported by the commands that use it: `labkit run` starts faster

    if args.leaks:
        found = doctor.leaks()
        print("\n".join(map(str, found)) if found else "no leaks: nothing of labkit's is left on this machine")
        return 1 if found else 0
    report = doctor.preflight()
    print(report)
    return 0 if report.ok else 1


def cmd_reset(args: argparse.Namespace) -> int:
    from . import doctor

    done = doctor.reset()
    print("\n".join(done) if done else "nothing to reset")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit", description="Container Lab: a container runtime built to learn from")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a command in a container made from a rootfs dir or a bundle")
    run.add_argument("target", help="a root filesystem directory, a bundle with config.json, or an image name")
    run.add_argument("--hostname")
    run.add_argument("--name", help="container id (default: random)")
    run.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    run.add_argument("--cap-add", action="append", default=[], metavar="CAP",
                     help="keep this capability too (e.g. NET_ADMIN; ALL for every one); repeatable")
    run.add_argument("--cap-drop", action="append", default=[], metavar="CAP",
                     help="drop this capability (ALL for every one; applied before --cap-add); repeatable")
    run.add_argument("--privileged", action="store_true", help="every capability (not a device or seccomp change yet)")
    run.add_argument("cmd", nargs="*", help="-- CMD ARGS... (default: sh)")
    run.set_defaults(func=cmd_run)
    pull_ = sub.add_parser("pull", help="pull an image from a registry into labkit's image store")
    pull_.add_argument("reference", help="e.g. 127.0.0.1:5000/demo/hello:1.0")
    pull_.add_argument("--platform", help="os/arch[/variant] to pick from a multi-platform index (default: this host)")
    push_ = sub.add_parser("push", help="push an image of the store to a registry")
    push_.add_argument("source", help="the image's name in the store (see `labkit images`)")
    push_.add_argument("reference", help="where to push it, e.g. 127.0.0.1:5000/demo/hello:1.0")
    for p in (pull_, push_):
        p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                       help="talk plain HTTP (or unverified TLS) to this registry host")
    pull_.set_defaults(func=cmd_pull)
    push_.set_defaults(func=cmd_push)
    sub.add_parser("images", help="the images in labkit's store").set_defaults(func=cmd_images)
    build_ = sub.add_parser("build", help="build an image from a Containerfile (a Dockerfile subset)")
    build_.add_argument("context", help="the build context directory")
    build_.add_argument("-t", "--tag", required=True, help="the name to give the image in the store")
    build_.add_argument("-f", "--file", help="the Containerfile (default: CONTEXT/Containerfile or Dockerfile)")
    build_.set_defaults(func=cmd_build)
    doc = sub.add_parser("doctor", help="check this machine's kernel features (or, with --leaks, leftovers)")
    doc.add_argument("--leaks", action="store_true", help="list kernel objects labkit left behind")
    doc.set_defaults(func=cmd_doctor)
    reset = sub.add_parser("reset", help="remove every container, mount, netns, link, cgroup and rule of labkit's")
    reset.set_defaults(func=cmd_reset)
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if cmd:
        args.cmd = cmd
    return _guarded(args.func, args)


def _guarded(func, args) -> int:
    try:
        return func(args)
    except LabkitError as err:
        print(f"labkit: {err}", file=sys.stderr)
        return 1


# --- labkit-runc: the OCI runtime command line lives in labkit.runc_cli -------------------------
def runc_main(argv: list[str] | None = None) -> int:
    from .runc_cli import main as runc

    return runc(argv)


if __name__ == "__main__":
    sys.exit(main())
