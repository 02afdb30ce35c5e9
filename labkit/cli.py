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
    """`labkit run DIR`: a bundle for a bundle or rootfs directory (images go to the engine):
    the bundle itself if nothing is changed, else a temp one; and the temp dir to remove."""
    target = os.path.abspath(args.image)
    is_bundle = os.path.exists(os.path.join(target, "config.json"))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    changes = command or args.hostname or args.cap_add or args.cap_drop or args.privileged
    if is_bundle and not changes:
        return target, None
    if is_bundle:
        spec = Spec.load(target)
        spec.root.path = spec.rootfs_path(target)
    else:
        spec = default_spec(["sh"], rootfs=target, hostname="labkit")
    if command:
        spec.process.args = command
    if args.hostname:
        spec.hostname = args.hostname
    _adjust_caps(spec, args)
    spec.validate()  # before the temp dir exists: nothing to clean up on a bad spec
    bundle = tempfile.mkdtemp(prefix="labkit-bundle-")
    spec.save(bundle)
    return bundle, bundle


def is_directory_target(image: str) -> bool:
    """`labkit run PATH` with a rootfs or bundle directory, as `runc run` (no engine record)."""
    return "/" in image and os.path.isdir(image)


def _adjust_caps(spec: Spec, args: argparse.Namespace) -> None:
    if args.cap_add or args.cap_drop or args.privileged:
        held = (spec.process.capabilities or {}).get("bounding", [])
        kept = capabilities.adjusted(held, ["ALL"] if args.privileged else args.cap_add, args.cap_drop)
        spec.process.capabilities = capabilities.oci_sets(kept)


def _store():
    from .registry.pull import default_store  # the image commands' imports stay off `labkit run DIR`

    return default_store()


def cmd_pull(args: argparse.Namespace) -> int:
    """As `docker pull` prints it: a line per layer, then the digest and what changed."""
    from .registry.progress import TextProgress
    from .registry.pull import pull
    from .registry.reference import parse_reference

    ref = parse_reference(args.reference)
    print(f"{ref.tag or ref.digest}: Pulling from {ref.repository}")
    result = pull(ref, _store(), platform=args.platform, insecure=args.insecure_registry,
                  progress=TextProgress(sys.stdout), tag=args.reference)
    print(f"Digest: {result.digest}")
    print(f"Status: {'Downloaded newer image' if result.fetched else 'Image is up to date'} for {result.tag}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """As `docker push` prints it: the repository, a line per layer, then the tag and digest."""
    from .images.builtin import local_ref
    from .registry.progress import TextProgress
    from .registry.push import push
    from .registry.reference import parse_reference

    store = _store()
    source = local_ref(store, args.source)  # `busybox` is built offline; `app:latest` finds `app`
    ref = parse_reference(args.reference)
    print(f"The push refers to repository [{ref.registry}/{ref.repository}]")
    result = push(store, source, ref, insecure=args.insecure_registry, progress=TextProgress(sys.stdout))
    print(f"{ref.tag or 'latest'}: digest: {result.digest}")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    """`labkit registry start|stop|status`: docker-registry on 127.0.0.1, kept running until stopped."""
    from .registry import service

    if args.registry_command == "start":
        state, started = service.start(args.port)
        print(f"registry {'started' if started else 'already running'} on {state.address} "
              f"(pid {state.pid}, storage {state.storage})\n"
              f"  push with: labkit push NAME {state.address}/demo/app:1")
        return 0
    if args.registry_command == "stop":
        stopped = service.stop()
        print(f"registry stopped ({stopped.address}, pid {stopped.pid})" if stopped else "registry: not running")
        return 0
    state = service.status()
    print(state)
    return 0 if state.running else 1


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


# --- save, load, import, rmi: images as archives and their removal (labkit.images.archive, .inventory) ---
def cmd_save(args: argparse.Namespace) -> int:
    from .images import archive

    store = _store()
    if args.output:
        archive.save_file(store, args.images, args.output, args.format)
        return 0
    if sys.stdout.isatty():  # docker's refusal, word for word
        raise LabkitError("cowardly refusing to save to a terminal. Use the -o flag or redirect",
                          "labkit save -o app.tar app, or labkit save app > app.tar")
    sys.stdout.flush()
    archive.save(store, args.images, sys.stdout.buffer, args.format)
    sys.stdout.buffer.flush()
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from .images import archive

    store = _store()
    if args.input:
        loaded = archive.load_file(store, args.input)
    elif sys.stdin.isatty():
        raise LabkitError("requested load from stdin, but stdin is empty", "labkit load -i FILE, or labkit load < FILE")
    else:
        loaded = archive.load(store, sys.stdin.buffer)
    for image in loaded:
        print("\n".join(image.lines()))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """`docker import FILE|- [REF]`: a root filesystem tarball as a one-layer image; prints its id."""
    from .images import base
    from .images.model import RunConfig
    from .runtime.spec import DEFAULT_PATH

    store = _store()
    run = base.apply_changes(RunConfig(env=[DEFAULT_PATH], cmd=["sh"]), args.change)
    if args.file != "-":
        if not os.path.isfile(args.file):
            raise LabkitError(f"{args.file}: no such file", "give a tarball of a root filesystem, or - for stdin")
        print(base.import_rootfs(store, args.file, args.reference, run).id)
        return 0
    if sys.stdin.isatty():
        raise LabkitError("import from stdin, but stdin is a terminal",
                          "pipe a tarball in: tar -C DIR -c . | labkit import -")
    scratch = tempfile.mkdtemp(dir=os.path.join(store.root, "blobs"), prefix=".import-")
    try:
        path = os.path.join(scratch, "-")  # the history says "imported from -", as docker's
        with open(path, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        print(base.import_rootfs(store, path, args.reference, run).id)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _image_users() -> dict:
    """Image id -> the containers made from it (their records keep it): rmi must not pull it away."""
    from .engine.containers import Engine
    from .engine.status import is_running
    from .images.inventory import Use

    users: dict = {}
    for rec in Engine().list(all=True):
        if rec.config.image_id:
            users.setdefault(rec.config.image_id, []).append(Use(rec.id, is_running(rec.state.status)))
    return users


def cmd_rmi(args: argparse.Namespace) -> int:
    """`docker rmi [-f] IMAGE...`: each in turn; a refusal is reported and the rest go on (exit 1)."""
    from .images import inventory

    store = _store()
    users = _image_users()
    failed = 0
    for ref in args.images:
        try:
            removal = inventory.remove(store, ref, args.force, users)
        except LabkitError as err:
            print(f"labkit: {err}", file=sys.stderr)
            failed = 1
            continue
        for line in removal.lines():
            print(line)
    return failed


def add_image_verbs(sub, grouped: bool = False) -> None:
    """save/load/import and rmi (`image rm`), at the top (`labkit save`) or in `labkit image …`."""
    save = sub.add_parser("save", help="write images to a tar archive (docker-archive or oci-archive)")
    save.add_argument("-o", "--output", help="the archive to write (default: stdout, if it is no terminal)")
    save.add_argument("--format", default="docker-archive", choices=["docker-archive", "oci-archive"],
                      help="docker-archive (docker save's, default) or oci-archive (an OCI layout)")
    save.add_argument("images", nargs="+", metavar="IMAGE", help="names or ids of images in the store")
    save.set_defaults(func=cmd_save)
    load = sub.add_parser("load", help="load images from a tar archive (docker-archive or oci-archive, gzip too)")
    load.add_argument("-i", "--input", help="the archive to read (default: stdin)")
    load.add_argument("-q", "--quiet", action="store_true", help="accepted for docker's sake (no progress is shown)")
    load.set_defaults(func=cmd_load)
    imp = sub.add_parser("import", help="a root filesystem tarball as a one-layer image; prints its id")
    imp.add_argument("file", metavar="FILE|-", help="the tarball (plain or gzip); - reads stdin")
    imp.add_argument("reference", nargs="?", metavar="REF", help="the name to give the image (default: none)")
    imp.add_argument("-c", "--change", action="append", default=[], metavar="INSTRUCTION",
                     help="CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL or EXPOSE, e.g. 'CMD [\"sh\"]'")
    imp.set_defaults(func=cmd_import)
    rmi = sub.add_parser("rm" if grouped else "rmi", aliases=["remove"] if grouped else [],
                         help="untag images and delete what no tag or container needs any more")
    rmi.add_argument("-f", "--force", action="store_true",
                     help="untag even the last tag of an image a container uses; remove all tags of an id")
    rmi.add_argument("images", nargs="+", metavar="IMAGE", help="names or ids (a unique prefix will do)")
    rmi.set_defaults(func=cmd_rmi)
    if grouped:
        sub.add_parser("ls", aliases=["list"], help="the images in labkit's store").set_defaults(func=cmd_images)


def cmd_run(args: argparse.Namespace) -> int:
    """`labkit run IMAGE …` is the engine's (labkit.cli_engine); `labkit run DIR …` runs a bundle or
    rootfs directory in the foreground, as `runc run`: this process creates the container
    (no monitor), is its reaper, forwards signals to it, and returns its exit code."""
    if not is_directory_target(args.image):
        from . import cli_engine

        return cli_engine.run_image(args)
    from .runtime import init

    unsupported = [flag for flag, on in (("-d", args.detach), ("--rm", False), ("-v", args.volume),
                                         ("--mount", args.mount), ("-e", args.env), ("-t", args.tty),
                                         ("--restart", args.restart != "no"), ("-m", args.memory)) if on]
    if unsupported:
        raise LabkitError(f"{', '.join(unsupported)}: not for a rootfs or bundle directory",
                          "run an image for the engine's options (labkit run busybox …), or edit the "
                          "bundle's config.json")
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import cli_engine

    cli_engine.add_verbs(sub)
    sub.choices["run"].set_defaults(func=cmd_run)
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
    add_image_verbs(sub)
    image_ = sub.add_parser("image", help="manage images: ls, save, load, import, rm")
    add_image_verbs(image_.add_subparsers(dest="image_command", required=True), grouped=True)
    doc = sub.add_parser("doctor", help="check this machine's kernel features (or, with --leaks, leftovers)")
    doc.add_argument("--leaks", action="store_true", help="list kernel objects labkit left behind")
    doc.set_defaults(func=cmd_doctor)
    reset = sub.add_parser("reset", help="remove every container, mount, netns, link, cgroup and rule of labkit's")
    reset.set_defaults(func=cmd_reset)
    reg = sub.add_parser("registry", help="a docker-registry on 127.0.0.1 for push and pull, until stopped")
    reg_sub = reg.add_subparsers(dest="registry_command", required=True)
    reg_start = reg_sub.add_parser("start", help="start it detached; its storage persists across stop/start")
    reg_start.add_argument("--port", type=int, help="the port on 127.0.0.1 (default 5000)")
    reg_sub.add_parser("stop", help="stop it (TERM, then KILL after 10 s)")
    reg_sub.add_parser("status", help="running or stopped, and where (exit status 1 when stopped)")
    reg.set_defaults(func=cmd_registry)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
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
