#!/usr/bin/env bash
# CI inside a real Vagrant VM (cgroup v2), on a Debian 12 host without
# systemd, reached over 127.0.0.1 only.
#
#   vagrant/ci/run-in-vm.sh [PYTEST ARGS...]
#       default PYTEST ARGS: -m vm tests/integration notebooks
#
# What it does, timing each stage:
#   1. installs the host packages it needs (apt, only what is missing);
#   2. starts virtlogd and libvirtd by hand (-d -p PIDFILE), unless running;
#   3. builds the libvirt box with build-box.sh (debootstrap, ~1.5 min) or
#      reuses the one cached under $LAB_CI_CACHE, and adds it to Vagrant;
#   4. brings up the repository's vagrant/Vagrantfile in CI mode
#      (LAB_CI_VM=1: QEMU TCG, CPU model Nehalem, QEMU user-mode networking
#      with SSH on 127.0.0.1 only, no libvirt network, the repository copied
#      in by rsync), then provisions it: the host's extra CA certificates,
#      provision/system.sh, `./lab.sh setup`, JupyterLab as a service;
#   5. checks cgroup2fs and JupyterLab through the forwarded port, then runs
#      `.venv/bin/labkit doctor` and `./lab.sh test PYTEST ARGS` in the VM;
#   6. always (trap): destroys the VM, deletes the libvirt volumes and pool
#      it added, stops the daemons it started by PID, and checks that no
#      link, firewall rule, loop device, mount or process was left behind.
# Exit status: that of the tests (non-zero on any failure, with the VM-side
# output shown).
#
# Environment (all optional):
#   LAB_CI_CACHE     cache directory [/var/cache/labkit-vagrant]: the built
#                    box and Vagrant's box store (VAGRANT_HOME)
#   LAB_CI_REBUILD=1 rebuild the box even if cached
#   LAB_CPUS [2], LAB_MEMORY [4096]: the VM's size
#   LAB_CI_KEEP=1    do not destroy the VM at the end (debugging only: the
#                    daemons are then left running too, and it says so; the
#                    next run of this script removes them all)
#   LAB_CI_SMOKE=1   infrastructure only (~1.5 min with a cached box): boot,
#                    cgroup2fs, the shared repository; no lab.sh, no tests
#   LAB_NODES=2      (with LAB_CI_SMOKE=1) two VMs, "lab" and "lab2", joined
#                    by a private link (Ethernet in UDP between the two QEMU
#                    processes over 127.0.0.1); checks they ping each other
#   LAB_SYNC_TYPE    synced-folder type [rsync]; virtiofs (with
#                    LAB_CI_SMOKE=1) tries the libvirt students' share
# Several runs at once are refused (flock on $LAB_CI_CACHE/lock). A run killed
# with SIGKILL leaves the VM and daemons; the next run recognises them (pid
# files under $LAB_CI_CACHE/run, the "labkit-ci" names) and removes them.
set -Eeuo pipefail

HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
VAGRANT_DIR=$(dirname "$HERE")
REPO=$(dirname "$VAGRANT_DIR")
CACHE=${LAB_CI_CACHE:-/var/cache/labkit-vagrant}
POOL=labkit-ci
GUEST_DIR=/home/vagrant/container-lab
if [ $# -gt 0 ]; then TEST_ARGS=("$@"); else TEST_ARGS=(-m vm tests/integration notebooks); fi

T_START=$EPOCHREALTIME
STAGES=()
say() { printf '\033[1m[ci-vm %(%H:%M:%S)T]\033[0m %s\n' -1 "$*" >&2; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
STAGE_NAME=""; STAGE_T0=""
stage() {   # stage NAME: ends the previous stage, starts the next
    stage_end
    STAGE_NAME=$1; STAGE_T0=$EPOCHREALTIME
    say "── $1"
}
stage_end() {
    if [ -n "$STAGE_NAME" ]; then
        local d; d=$(secs "$STAGE_T0" "$EPOCHREALTIME")
        STAGES+=("$(printf '%-48s %7ss' "$STAGE_NAME" "$d")")
        say "   $STAGE_NAME: ${d}s"
        STAGE_NAME=""
    fi
}

[ "$(id -u)" = 0 ] || { say "run me as root"; exit 1; }

mkdir -p "$CACHE"
exec 9> "$CACHE/lock"
flock -n 9 || { say "another run-in-vm.sh is running (lock $CACHE/lock)"; exit 1; }
# (fd 9 is closed for the daemons and jobs started below, so that only this
# script holds the lock.)
# Work directories of earlier runs that were killed (we hold the lock).
rm -rf /tmp/labkit-ci-vm.??????
RUN=$(mktemp -d /tmp/labkit-ci-vm.XXXXXX)
chmod 0755 "$RUN"
LOGS=$CACHE/logs
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log

# What this run started or added, for the cleanup.
STARTED_VIRTLOGD=""; STARTED_LIBVIRTD=""; CREATED_POOL=""; FOREIGN_PIDS=""; ADDED_POLICY_RC=""
CREATED_RUN_LIBVIRT=""; VOLS_BEFORE=""; FAILED_STAGE=""; CHILD=""
# The daemons' pid files live at a fixed place, so that a run killed with
# SIGKILL (no trap) leaves daemons the next run recognises as its own.
PIDDIR=$CACHE/run
mkdir -p "$PIDDIR"

# Long steps run as a background job in their own process group (set -m),
# so that INT/TERM reach the trap at once (bash defers traps while a
# foreground command runs) and the cleanup can stop the whole job.
set -m
run_job() {   # run_job FUNCTION_OR_COMMAND ARGS...
    "$@" < /dev/null 9>&- &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}
stamp() {     # prefix each line with the time; drop progress meters
    local line
    while IFS= read -r line; do
        case $line in *Progress:*) continue ;; esac
        printf '%(%H:%M:%S)T %s\n' -1 "$line"
    done
}

snapshot_host() {   # snapshot_host SUFFIX: the host state we promise to leave alone
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort > "$RUN/links.$1"
    nft list ruleset > "$RUN/nft.$1" 2>&1 || true
    { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -v '^#' > "$RUN/iptables.$1" || true
    losetup -a > "$RUN/loop.$1" 2>&1 || true
    awk '{print $5}' /proc/self/mountinfo | sort > "$RUN/mounts.$1"
    find /sys/fs/cgroup -maxdepth 2 -type d -name machine 2>/dev/null | sort > "$RUN/cgroups.$1"
}

virsh_() { virsh -q -c qemu:///system "$@"; }

cleanup() {
    local rc=$?
    set +e
    trap - ERR
    if [ -n "$CHILD" ]; then
        kill -TERM -- "-$CHILD" 2>/dev/null; sleep 2; kill -KILL -- "-$CHILD" 2>/dev/null
        say "stopped the running step (job $CHILD)"
    fi
    stage_end
    [ -n "$FAILED_STAGE" ] || { [ "$rc" != 0 ] && FAILED_STAGE=${LAST_STAGE:-?}; }
    STAGE_NAME=""; stage "teardown"
    if [ "${LAB_CI_KEEP:-0}" = 1 ]; then
        say "LAB_CI_KEEP=1: the VM, libvirtd (pid ${STARTED_LIBVIRTD:-?}) and virtlogd (pid ${STARTED_VIRTLOGD:-?}) are left RUNNING."
        say "   ssh -F $RUN/ssh_config lab; the next run of $0 removes them all"
        return "$rc"
    fi
    if [ -S /run/libvirt/libvirt-sock ]; then
        if [ -d "$RUN/dotvagrant" ]; then
            timeout 300 vagrant destroy -f > "$LOGS/destroy.log" 2>&1 || say "vagrant destroy failed (see $LOGS/destroy.log)"
        fi
        # Anything of ours that Vagrant did not remove (interrupted `up`).
        local d
        for d in $(virsh_ list --all --name | grep '^labkit-ci-' || true); do
            say "removing leftover domain $d"
            virsh_ destroy "$d" > /dev/null 2>&1; virsh_ undefine --nvram "$d" > /dev/null 2>&1 || virsh_ undefine "$d" > /dev/null 2>&1
        done
        if virsh_ pool-info "$POOL" > /dev/null 2>&1; then
            local v
            virsh_ pool-refresh "$POOL" > /dev/null 2>&1
            for v in $(virsh_ vol-list "$POOL" | awk '{print $1}'); do
                if ! grep -qxF "$v" <<< "$VOLS_BEFORE"; then
                    virsh_ vol-delete --pool "$POOL" "$v" > /dev/null && say "deleted volume $v (added by this run)"
                fi
            done
            if [ -n "$CREATED_POOL" ]; then
                virsh_ pool-destroy "$POOL" > /dev/null && say "removed transient pool $POOL"
                virsh_ pool-undefine "$POOL" > /dev/null 2>&1
            fi
        fi
    fi
    local name pid
    for name in libvirtd virtlogd; do
        if [ "$name" = libvirtd ]; then pid=$STARTED_LIBVIRTD; else pid=$STARTED_VIRTLOGD; fi
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; say "$name ($pid) killed"; else say "$name ($pid) stopped"; fi
        rm -f "$PIDDIR/$name.pid"
    done
    # Runtime directories our libvirtd made (sockets, state), if /run/libvirt
    # did not exist before.
    if [ -n "$CREATED_RUN_LIBVIRT" ] && [ -n "$STARTED_LIBVIRTD" ] && ! pgrep -x libvirtd > /dev/null; then
        rm -rf /run/libvirt
    fi
    [ -n "$STARTED_LIBVIRTD" ] && ! pgrep -x libvirtd > /dev/null && rm -f "$PIDDIR/created-run-libvirt"
    if [ -n "$ADDED_POLICY_RC" ]; then rm -f /usr/sbin/policy-rc.d; fi
    # cgroups (v1 hierarchies) that our libvirtd made for the domain.
    local cg
    find /sys/fs/cgroup -maxdepth 2 -type d -name machine 2>/dev/null | sort > "$RUN/cgroups.after"
    for cg in $(comm -13 "$RUN/cgroups.before" "$RUN/cgroups.after" 2>/dev/null); do
        find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    stage_end

    # The promise: nothing left behind.
    local leaks=0
    if [ ! -e "$RUN/links.before" ]; then rm -rf "$RUN"; say "RESULT: FAILED (exit $rc) before the VM stage"; exit "$rc"; fi
    snapshot_host after
    local what
    for what in links nft iptables loop mounts cgroups; do
        if ! diff -u "$RUN/$what.before" "$RUN/$what.after" > "$RUN/$what.diff" 2>&1; then
            say "LEAK CHECK: $what changed:"; cat "$RUN/$what.diff" >&2; leaks=1
        fi
    done
    local procs
    procs=$(vm_procs | grep -vxF -f <(printf '%s\n' $FOREIGN_PIDS) || true)
    if [ -n "$procs" ]; then
        procs=$(ps -o pid=,args= -p "$(echo $procs | tr ' ' ',')" 2>/dev/null || true)
    fi
    if [ -n "$procs" ]; then
        say "LEAK CHECK: processes left:"; echo "$procs" >&2; leaks=1
    fi
    [ "$leaks" = 0 ] && say "leak check: no link, bridge, firewall rule, loop device, mount, cgroup or process left behind"
    [ "$leaks" = 0 ] || { [ "$rc" = 0 ] && rc=3; }
    rm -rf "$RUN"

    say "── stage times"
    printf '   %s\n' "${STAGES[@]}" >&2
    say "   total: $(secs "$T_START" "$EPOCHREALTIME")s"
    if [ "$rc" = 0 ]; then say "RESULT: PASSED (inside the VM)"; else say "RESULT: FAILED (exit $rc) in stage: ${FAILED_STAGE:-?}; logs in $LOGS"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'FAILED_STAGE="$STAGE_NAME (interrupted)"; exit 130' INT
trap 'FAILED_STAGE="$STAGE_NAME (terminated)"; exit 143' TERM
trap 'LAST_STAGE=$STAGE_NAME' ERR

# ---------------------------------------------------------------------------
stage "host packages"
PKGS=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
      qemu-system-x86 qemu-utils debootstrap fdisk e2fsprogs grub-pc-bin grub-common
      rsync openssh-client libarchive-tools iptables nftables iproute2 curl util-linux)
missing=()
for p in "${PKGS[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    # No service may start from the packages' scripts: this script starts
    # (and stops) the daemons itself.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; ADDED_POLICY_RC=1
    fi
    apt-get update -qq > "$LOGS/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >> "$LOGS/apt.log" 2>&1 \
        || { tail -30 "$LOGS/apt.log" >&2; exit 1; }
    if [ -n "$ADDED_POLICY_RC" ]; then rm -f /usr/sbin/policy-rc.d; ADDED_POLICY_RC=""; fi
fi

# ---------------------------------------------------------------------------
stage "libvirt daemons"
vm_procs() {   # PIDs of the kinds of process this script starts, directly or not
    ps -eo pid=,args= | grep -E "qemu-system|virtiofsd|libvirtd|virtlogd|-L 127.0.0.1:[0-9]+:127.0.0.1:8888" \
        | grep -vE 'grep -E' | awk '{print $1}' || true
}
PRE_PIDS=$(vm_procs)
if [ -e /etc/libvirt/qemu/networks/autostart/default.xml ]; then
    say "libvirt's 'default' network is set to autostart: it would create virbr0 and firewall rules."
    say "refusing to start libvirtd (run: virsh net-autostart --disable default)"; exit 1
fi
snapshot_host before
adopt() {   # adopt NAME: a daemon left by an earlier run of this script that was killed
    local pid
    pid=$(cat "$PIDDIR/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || { rm -f "$PIDDIR/$1.pid"; return 1; }
    say "$1 (pid $pid) was left by an earlier, interrupted run: using it, and stopping it at the end"
    echo "$pid"
}
if [ ! -d /run/libvirt ]; then CREATED_RUN_LIBVIRT=1; touch "$PIDDIR/created-run-libvirt"
elif [ -e "$PIDDIR/created-run-libvirt" ]; then CREATED_RUN_LIBVIRT=1   # by an interrupted run
fi
if STARTED_VIRTLOGD=$(adopt virtlogd); then :
elif ! pgrep -x virtlogd > /dev/null; then
    virtlogd -d -p "$PIDDIR/virtlogd.pid" 9>&-
    for _ in $(seq 1 50); do [ -s "$PIDDIR/virtlogd.pid" ] && break; sleep 0.1; done
    STARTED_VIRTLOGD=$(cat "$PIDDIR/virtlogd.pid")
    say "virtlogd started, pid $STARTED_VIRTLOGD"
else
    STARTED_VIRTLOGD=""; say "virtlogd already running (not ours): using it, leaving it running"
fi
if STARTED_LIBVIRTD=$(adopt libvirtd); then :
elif ! pgrep -x libvirtd > /dev/null; then
    # libvirtd runs in a private mount namespace in which /dev/kvm is covered
    # by an empty file. This host's /dev/kvm (root-only, and unable to boot a
    # stock kernel anyway) is usable by QEMU's capability probe but not by
    # the libvirt-qemu user; libvirt 9.0 then finds its capability cache
    # "invalid" on every lookup and re-probes QEMU a dozen times per domain
    # definition (~50 s each, twice per `vagrant up`). Without KVM in sight
    # the cache stays valid. The VM uses TCG (driver "qemu") anyway.
    # In that namespace only, qemu.conf gets `namespaces = [ ]`: libvirt
    # would otherwise move every mount under /dev (our /dev/kvm cover) into
    # each QEMU's private /dev, which fails for a file mount. Both mounts
    # exist only in that namespace and end with libvirtd; /etc is unchanged.
    : > "$PIDDIR/no-kvm"; chmod 000 "$PIDDIR/no-kvm"
    { cat /etc/libvirt/qemu.conf; printf '\n# labkit CI (run-in-vm.sh)\nnamespaces = [ ]\n'; } > "$PIDDIR/qemu.conf"
    unshare --mount --propagation private -- sh -c '
        set -e
        if [ -e /dev/kvm ]; then mount --bind "$1" /dev/kvm; fi
        mount --bind "$2" /etc/libvirt/qemu.conf
        exec libvirtd -d -p "$3"' \
        sh "$PIDDIR/no-kvm" "$PIDDIR/qemu.conf" "$PIDDIR/libvirtd.pid" 9>&-
    for _ in $(seq 1 50); do [ -s "$PIDDIR/libvirtd.pid" ] && break; sleep 0.1; done
    STARTED_LIBVIRTD=$(cat "$PIDDIR/libvirtd.pid")
    say "libvirtd started, pid $STARTED_LIBVIRTD"
else
    STARTED_LIBVIRTD=""; say "libvirtd already running (not ours): using it, leaving it running"
fi
# Processes of those kinds that were there before and are not ours (left
# alone and not counted as leaks).
FOREIGN_PIDS=$(printf '%s\n' $PRE_PIDS | grep -vxF -e "${STARTED_LIBVIRTD:-x}" -e "${STARTED_VIRTLOGD:-x}" || true)
for _ in $(seq 1 100); do virsh_ version > /dev/null 2>&1 && break; sleep 0.2; done
virsh_ version > /dev/null
if [ -n "$(virsh_ net-list --name)" ]; then
    say "an active libvirt network exists ($(virsh_ net-list --name | tr '\n' ' ')): refusing to go on"; exit 1
fi

# ---------------------------------------------------------------------------
stage "box (build or reuse)"
# The box holds the lab's packages and Python environment: a new list or pyproject, a new box.
BOX_HASH=$({ cat "$HERE/build-box.sh" "$REPO/pyproject.toml"; "$REPO/lab.sh" packages; } | sha256sum | cut -c1-12)
BOX_NAME=labkit-ci/debian12-$BOX_HASH
BOX_FILE=$CACHE/boxes/labkit-debian12-$BOX_HASH.box
mkdir -p "$CACHE/boxes"
if [ "${LAB_CI_REBUILD:-0}" = 1 ] || [ ! -s "$BOX_FILE" ]; then
    say "building $BOX_FILE"
    "$HERE/build-box.sh" "$BOX_FILE" 2>&1 | tee "$LOGS/build-box.log" >&2
    # Only the current box is kept.
    find "$CACHE/boxes" -name 'labkit-debian12-*.box' ! -name "$(basename "$BOX_FILE")" -delete
else
    say "reusing $BOX_FILE"
fi
export VAGRANT_HOME=$CACHE/vagrant.d
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1 VAGRANT_NO_COLOR=1
if [ "${LAB_CI_REBUILD:-0}" = 1 ] || ! grep -q "^$BOX_NAME " <<< "$(vagrant box list 2>/dev/null)"; then
    vagrant box add --force --name "$BOX_NAME" "$BOX_FILE" > "$LOGS/box-add.log" 2>&1 \
        || { cat "$LOGS/box-add.log" >&2; exit 1; }
fi
for old in $(vagrant box list 2>/dev/null | awk '{print $1}' | grep '^labkit-ci/' | grep -vxF "$BOX_NAME" || true); do
    vagrant box remove --force --all "$old" > /dev/null 2>&1 || true
done

# ---------------------------------------------------------------------------
stage "libvirt storage pool"
# (No `cmd | grep -q` here: with pipefail, grep's early exit can fail the pipe.)
if grep -q '^Persistent: *no' <<< "$(virsh_ pool-info "$POOL" 2>/dev/null)"; then
    # Only this script makes this transient pool: an interrupted run left it.
    say "pool $POOL was left by an earlier, interrupted run: its volumes go at the end"
    CREATED_POOL=1; VOLS_BEFORE=""
elif virsh_ pool-info "$POOL" > /dev/null 2>&1; then
    VOLS_BEFORE=$(virsh_ vol-list "$POOL" | awk '{print $1}')
else
    mkdir -p "$CACHE/pool"
    # Transient: gone from libvirt once destroyed; no definition is left.
    virsh_ pool-create-as "$POOL" dir --target "$CACHE/pool" > /dev/null
    CREATED_POOL=1
    # $CACHE/pool is this script's alone: whatever is in it was left by an
    # interrupted run, and goes at the end with what this run adds.
    VOLS_BEFORE=""
fi
# Put the box image into the pool as a hard link (same file system) under
# the volume name vagrant-libvirt 0.11 looks for, instead of letting it
# stream and write another ~0.9 GB copy. Should the name scheme differ,
# vagrant-libvirt simply uploads it as usual.
box_img=$(ls "$VAGRANT_HOME"/boxes/"${BOX_NAME//\//-VAGRANTSLASH-}"/0/libvirt/box.img 2>/dev/null | head -1)
if [ -n "$box_img" ]; then
    vol="${BOX_NAME//\//-VAGRANTSLASH-}_vagrant_box_image_0_$(stat -c %Y "$box_img")_box.img"
    pool_dir=$(virsh_ pool-dumpxml "$POOL" | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -1)
    if ! grep -qxF "$vol" <<< "$VOLS_BEFORE" && [ -n "$pool_dir" ] \
            && ln "$box_img" "$pool_dir/$vol" 2>/dev/null; then
        virsh_ pool-refresh "$POOL" > /dev/null
        say "box image linked into pool $POOL as $vol"
    fi
fi
# Leftover domains of an earlier, interrupted run would collide by name.
for d in $(virsh_ list --all --name | grep '^labkit-ci-' || true); do
    say "removing stale domain $d (and its disk) from an earlier run"
    virsh_ destroy "$d" > /dev/null 2>&1 || true
    virsh_ undefine --remove-all-storage "$d" > /dev/null 2>&1 || virsh_ undefine "$d" > /dev/null 2>&1 || true
done

# ---------------------------------------------------------------------------
free_port() {   # free_port START [PROTO]: first port >= START free on 127.0.0.1, with the next one free too
    local p=$1 proto=${2:-t}
    while [ -n "$(ss -Hl$proto"n" "( sport = :$p or sport = :$((p + 1)) )" 2>/dev/null)" ]; do p=$((p + 2)); done
    echo "$p"
}
NODES=${LAB_NODES:-1}
case $NODES in 1|2) ;; *) say "LAB_NODES must be 1 or 2 in CI mode"; exit 2 ;; esac
export VAGRANT_CWD=$VAGRANT_DIR VAGRANT_DOTFILE_PATH=$RUN/dotvagrant VAGRANT_DEFAULT_PROVIDER=libvirt
export LAB_CI_VM=1 LAB_BOX=$BOX_NAME LAB_CI_POOL=$POOL LAB_NODES=$NODES
export LAB_CI_SSH_PORT=${LAB_CI_SSH_PORT:-$(free_port 22220)}
export LAB_JUPYTER_PORT=${LAB_CI_JUPYTER_PORT:-$(free_port 18888)}
export LAB_CI_LINK_PORT=${LAB_CI_LINK_PORT:-$(free_port 47000 u)}
export LAB_CI_SERIAL_LOG=$RUN/serial-%N.log
export LAB_CPUS=${LAB_CPUS:-2} LAB_MEMORY=${LAB_MEMORY:-4096}
unset LAB_PROVIDER
# LAB_SYNC_TYPE is kept if set (default in CI mode: rsync), e.g. virtiofs to
# try the libvirt students' share with LAB_CI_SMOKE=1.
if [ -d /usr/local/share/ca-certificates ] && [ -n "$(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null)" ]; then
    export LAB_EXTRA_CA_DIR=/usr/local/share/ca-certificates
fi

show_vm_side() {   # the VM's own view when something failed
    say "── VM-side output (serial console, last 60 lines)"
    tail -n 60 "$RUN/serial-lab.log" 2>/dev/null >&2 || true
    if [ -s "$RUN/ssh_config" ]; then
        say "── VM journal (errors, last 40 lines)"
        ssh -F "$RUN/ssh_config" lab 'sudo journalctl -p err -n 40 --no-pager' >&2 2>/dev/null || true
    fi
}

stage "vagrant up (boot + rsync)"
say "box $BOX_NAME, ${LAB_CPUS} vCPU, ${LAB_MEMORY} MiB, ssh 127.0.0.1:$LAB_CI_SSH_PORT, jupyter 127.0.0.1:$LAB_JUPYTER_PORT"
do_up() { vagrant up --provider=libvirt --no-provision 2>&1 | stamp > "$LOGS/up.log"; }
if ! run_job do_up; then
    FAILED_STAGE="vagrant up"; cat "$LOGS/up.log" >&2; show_vm_side; exit 1
fi
grep -E 'Uploading|Creating image|Starting domain|Waiting for|SSH address|Machine booted|Rsyncing|Setting hostname|Forwarding' "$LOGS/up.log" \
    | grep -v 'Exclude' | sed 's/^/   | /' >&2 || true
vagrant ssh-config > "$RUN/ssh_config"
in_vm() { ssh -n -F "$RUN/ssh_config" -o LogLevel=ERROR lab "$@"; }

if [ "${LAB_CI_SMOKE:-0}" = 1 ]; then
    # Infrastructure only (a few minutes): boot, cgroup v2, the share, and
    # with LAB_NODES=2 the VMs' private link. No lab.sh, no tests.
    stage "smoke checks"
    nodes=(lab); [ "$NODES" = 2 ] && nodes+=(lab2)
    for n in "${nodes[@]}"; do
        ssh -n -F "$RUN/ssh_config" -o LogLevel=ERROR "$n" "set -e; echo \"$n: \$(uname -r), /sys/fs/cgroup is \$(stat -fc %T /sys/fs/cgroup), \$(test -x $GUEST_DIR/lab.sh && echo repo shared at $GUEST_DIR)\"
            test \"\$(stat -fc %T /sys/fs/cgroup)\" = cgroup2fs; test -x $GUEST_DIR/lab.sh" >&2 \
            || { FAILED_STAGE="smoke checks"; show_vm_side; exit 1; }
    done
    if [ -n "${LAB_SYNC_TYPE:-}" ] && [ "$LAB_SYNC_TYPE" != rsync ]; then
        vagrant provision lab --provision-with venv-mount > "$LOGS/venv-mount.log" 2>&1 \
            || { cat "$LOGS/venv-mount.log" >&2; FAILED_STAGE="smoke checks"; exit 1; }
        in_vm "findmnt -no SOURCE,FSTYPE,TARGET $GUEST_DIR; findmnt -no SOURCE,TARGET $GUEST_DIR/.venv; mountpoint -q $GUEST_DIR/.venv" >&2 \
            || { FAILED_STAGE="smoke checks"; exit 1; }
    fi
    if [ "$NODES" = 2 ]; then
        for n in lab lab2; do
            vagrant provision "$n" --provision-with peer-link > "$LOGS/peer-link-$n.log" 2>&1 \
                || { cat "$LOGS/peer-link-$n.log" >&2; FAILED_STAGE="smoke checks"; exit 1; }
        done
        net=${LAB_NET:-192.168.56}
        in_vm "ip -4 -br addr show eth1; ping -c 3 -W 5 $net.12" 2>&1 | sed 's/^/   | /' >&2 \
            || { FAILED_STAGE="smoke checks (peer link)"; exit 1; }
    fi
    exit 0
fi

stage "provision (CA, system, lab.sh setup, jupyter)"
do_provision() { vagrant provision lab 2>&1 | stamp | tee "$LOGS/provision.log" | sed -u 's/^/   | /' >&2; }
if ! run_job do_provision; then
    FAILED_STAGE="provision"; show_vm_side; exit 1
fi
grep -q 'JupyterLab: http://127.0.0.1:' "$LOGS/provision.log" || { FAILED_STAGE="provision"; show_vm_side; exit 1; }

stage "checks (cgroup v2, jupyter via forwarded port)"
if ! in_vm "set -e; printf 'kernel: '; uname -r; printf '/sys/fs/cgroup: '; stat -fc %T /sys/fs/cgroup;
       printf 'controllers: '; cat /sys/fs/cgroup/cgroup.controllers;
       printf 'root subtree_control: '; cat /sys/fs/cgroup/cgroup.subtree_control;
       printf 'overlay: '; grep -w overlay /proc/filesystems;
       test \"\$(stat -fc %T /sys/fs/cgroup)\" = cgroup2fs" 2>&1 | sed 's/^/   | /' >&2; then
    FAILED_STAGE="checks"; show_vm_side; exit 1
fi
token=$(in_vm 'sudo cat /etc/container-lab/jupyter-token')
if curl -fsS -o /dev/null --max-time 30 -H "Authorization: token $token" "http://127.0.0.1:$LAB_JUPYTER_PORT/api/status"; then
    say "JupyterLab answers on the host at 127.0.0.1:$LAB_JUPYTER_PORT (forwarded into the VM)"
else
    FAILED_STAGE="checks"; say "JupyterLab does not answer on 127.0.0.1:$LAB_JUPYTER_PORT"; show_vm_side; exit 1
fi

stage "labkit doctor (in VM)"
do_doctor() { in_vm "cd $GUEST_DIR && sudo .venv/bin/labkit doctor" 2>&1 | tee "$LOGS/doctor.log" | sed -u 's/^/   | /' >&2; }
if ! run_job do_doctor; then
    FAILED_STAGE="labkit doctor"; show_vm_side; exit 1
fi

stage "lab.sh test (in VM)"
quoted=$(printf ' %q' "${TEST_ARGS[@]}")
say "./lab.sh test$quoted"
do_test() { in_vm "cd $GUEST_DIR && sudo ./lab.sh test$quoted" 2>&1 | stamp | tee "$LOGS/test.log" | sed -u 's/^/   | /' >&2; }
test_rc=0
run_job do_test || test_rc=$?
if [ "$test_rc" != 0 ]; then
    FAILED_STAGE="lab.sh test"; show_vm_side; exit "$test_rc"
fi
exit 0
