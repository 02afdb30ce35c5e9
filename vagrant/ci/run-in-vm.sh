#!/usr/bin/env bash
# CI inside a real Vagrant VM (cgroup v2), on a Debian 12 host without
# systemd, reached over 127.0.0.1 only.
#
#   vagrant/ci/run-in-vm.sh [PYTEST ARGS...]
#       default PYTEST ARGS: -m vm tests/integration tests/notebooks
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
#                    daemons are then left running too, and it says so)
set -Eeuo pipefail

HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
VAGRANT_DIR=$(dirname "$HERE")
REPO=$(dirname "$VAGRANT_DIR")
CACHE=${LAB_CI_CACHE:-/var/cache/labkit-vagrant}
POOL=labkit-ci
GUEST_DIR=/home/vagrant/container-lab
if [ $# -gt 0 ]; then TEST_ARGS=("$@"); else TEST_ARGS=(-m vm tests/integration tests/notebooks); fi

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
        STAGES+=("$(printf '%-34s %7ss' "$STAGE_NAME" "$d")")
        say "   $STAGE_NAME: ${d}s"
        STAGE_NAME=""
    fi
}

[ "$(id -u)" = 0 ] || { say "run me as root"; exit 1; }

mkdir -p "$CACHE"
RUN=$(mktemp -d /tmp/labkit-ci-vm.XXXXXX)
chmod 0755 "$RUN"
LOGS=$CACHE/logs
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log

# What this run started or added, for the cleanup.
STARTED_VIRTLOGD=""; STARTED_LIBVIRTD=""; CREATED_POOL=""; ADDED_POLICY_RC=""
VOLS_BEFORE=""; VM_UP=""; FAILED_STAGE=""

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
    stage_end
    [ -n "$FAILED_STAGE" ] || { [ "$rc" != 0 ] && FAILED_STAGE=${LAST_STAGE:-?}; }
    STAGE_NAME=""; stage "teardown"
    if [ "${LAB_CI_KEEP:-0}" = 1 ]; then
        say "LAB_CI_KEEP=1: the VM, libvirtd (pid ${STARTED_LIBVIRTD:-?}) and virtlogd (pid ${STARTED_VIRTLOGD:-?}) are left RUNNING."
        say "   ssh -F $RUN/ssh_config lab; afterwards run: VAGRANT_DOTFILE_PATH=$RUN/dotvagrant ... vagrant destroy -f"
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
        rm -f "$RUN/$name.pid"
    done
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
    snapshot_host after
    local what
    for what in links nft iptables loop mounts cgroups; do
        if ! diff -u "$RUN/$what.before" "$RUN/$what.after" > "$RUN/$what.diff" 2>&1; then
            say "LEAK CHECK: $what changed:"; cat "$RUN/$what.diff" >&2; leaks=1
        fi
    done
    local procs
    procs=$(ps -eo pid=,args= | grep -E 'qemu-system|libvirtd|virtlogd|labkit-ci-' | grep -vE 'grep -E|run-in-vm' || true)
    if [ -n "$procs" ] && [ -z "$PRE_PROCS" ]; then
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
trap 'exit 130' INT TERM
trap 'LAST_STAGE=$STAGE_NAME' ERR

# ---------------------------------------------------------------------------
stage "host packages"
PKGS=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
      qemu-system-x86 qemu-utils debootstrap fdisk e2fsprogs grub-pc-bin grub-common
      rsync openssh-client libarchive-tools iptables nftables iproute2 curl util-linux)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
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
PRE_PROCS=$(pgrep -x 'libvirtd|virtlogd' || true)
if [ -e /etc/libvirt/qemu/networks/autostart/default.xml ]; then
    say "libvirt's 'default' network is set to autostart: it would create virbr0 and firewall rules."
    say "refusing to start libvirtd (run: virsh net-autostart --disable default)"; exit 1
fi
snapshot_host before
if ! pgrep -x virtlogd > /dev/null; then
    virtlogd -d -p "$RUN/virtlogd.pid"
    for _ in $(seq 1 50); do [ -s "$RUN/virtlogd.pid" ] && break; sleep 0.1; done
    STARTED_VIRTLOGD=$(cat "$RUN/virtlogd.pid")
    say "virtlogd started, pid $STARTED_VIRTLOGD"
fi
if ! pgrep -x libvirtd > /dev/null; then
    libvirtd -d -p "$RUN/libvirtd.pid"
    for _ in $(seq 1 50); do [ -s "$RUN/libvirtd.pid" ] && break; sleep 0.1; done
    STARTED_LIBVIRTD=$(cat "$RUN/libvirtd.pid")
    say "libvirtd started, pid $STARTED_LIBVIRTD"
fi
for _ in $(seq 1 100); do virsh_ version > /dev/null 2>&1 && break; sleep 0.2; done
virsh_ version > /dev/null
if virsh_ net-list --name | grep -q .; then
    say "an active libvirt network exists ($(virsh_ net-list --name | tr '\n' ' ')): refusing to go on"; exit 1
fi

# ---------------------------------------------------------------------------
stage "box (build or reuse)"
BOX_HASH=$(sha256sum "$HERE/build-box.sh" | cut -c1-12)
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
if [ "${LAB_CI_REBUILD:-0}" = 1 ] || ! vagrant box list 2>/dev/null | grep -q "^$BOX_NAME "; then
    vagrant box add --force --name "$BOX_NAME" "$BOX_FILE" > "$LOGS/box-add.log" 2>&1 \
        || { cat "$LOGS/box-add.log" >&2; exit 1; }
fi
for old in $(vagrant box list 2>/dev/null | awk '{print $1}' | grep '^labkit-ci/' | grep -vxF "$BOX_NAME" || true); do
    vagrant box remove --force --all "$old" > /dev/null 2>&1 || true
done

# ---------------------------------------------------------------------------
stage "libvirt storage pool"
if virsh_ pool-info "$POOL" > /dev/null 2>&1; then
    VOLS_BEFORE=$(virsh_ vol-list "$POOL" | awk '{print $1}')
else
    mkdir -p "$CACHE/pool"
    # Transient: gone from libvirt once destroyed; no definition is left.
    virsh_ pool-create-as "$POOL" dir --target "$CACHE/pool" > /dev/null
    CREATED_POOL=1
    VOLS_BEFORE=$(virsh_ vol-list "$POOL" | awk '{print $1}')
fi
# Leftover domains of an earlier, interrupted run would collide by name.
for d in $(virsh_ list --all --name | grep '^labkit-ci-' || true); do
    say "removing stale domain $d from an earlier run"
    virsh_ destroy "$d" > /dev/null 2>&1 || true; virsh_ undefine "$d" > /dev/null 2>&1 || true
done

# ---------------------------------------------------------------------------
free_port() {
    local p=$1
    while [ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; do p=$((p + 1)); done
    echo "$p"
}
export VAGRANT_CWD=$VAGRANT_DIR VAGRANT_DOTFILE_PATH=$RUN/dotvagrant VAGRANT_DEFAULT_PROVIDER=libvirt
export LAB_CI_VM=1 LAB_BOX=$BOX_NAME LAB_CI_POOL=$POOL LAB_NODES=1
export LAB_CI_SSH_PORT=${LAB_CI_SSH_PORT:-$(free_port 22220)}
export LAB_JUPYTER_PORT=${LAB_CI_JUPYTER_PORT:-$(free_port 18888)}
export LAB_CI_SERIAL_LOG=$RUN/serial.log
export LAB_CPUS=${LAB_CPUS:-2} LAB_MEMORY=${LAB_MEMORY:-4096}
unset LAB_PROVIDER LAB_SYNC_TYPE
if [ -d /usr/local/share/ca-certificates ] && [ -n "$(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null)" ]; then
    export LAB_EXTRA_CA_DIR=/usr/local/share/ca-certificates
fi

show_vm_side() {   # the VM's own view when something failed
    say "── VM-side output (serial console, last 60 lines)"
    tail -n 60 "$LAB_CI_SERIAL_LOG" 2>/dev/null >&2 || true
    if [ -s "$RUN/ssh_config" ]; then
        say "── VM journal (errors, last 40 lines)"
        ssh -F "$RUN/ssh_config" lab 'sudo journalctl -p err -n 40 --no-pager' >&2 2>/dev/null || true
    fi
}

stage "vagrant up (boot + rsync)"
say "box $BOX_NAME, ${LAB_CPUS} vCPU, ${LAB_MEMORY} MiB, ssh 127.0.0.1:$LAB_CI_SSH_PORT, jupyter 127.0.0.1:$LAB_JUPYTER_PORT"
VM_UP=1
if ! vagrant up --provider=libvirt --no-provision > "$LOGS/up.log" 2>&1; then
    FAILED_STAGE="vagrant up"; cat "$LOGS/up.log" >&2; show_vm_side; exit 1
fi
sed 's/^/   | /' "$LOGS/up.log" | grep -vE 'Rsyncing folder|^   \| *$' | tail -n 25 >&2 || true
vagrant ssh-config lab > "$RUN/ssh_config"
in_vm() { ssh -F "$RUN/ssh_config" -o LogLevel=ERROR lab "$@"; }

stage "provision (CA, system, lab.sh setup, jupyter)"
if ! vagrant provision lab 2>&1 | tee "$LOGS/provision.log" | sed -u 's/^/   | /' >&2; then
    FAILED_STAGE="provision"; show_vm_side; exit 1
fi
grep -q 'JupyterLab: http://127.0.0.1:' "$LOGS/provision.log" || { FAILED_STAGE="provision"; show_vm_side; exit 1; }

stage "checks (cgroup v2, jupyter via forwarded port)"
in_vm "set -e; printf 'kernel: '; uname -r; printf '/sys/fs/cgroup: '; stat -fc %T /sys/fs/cgroup;
       printf 'controllers: '; cat /sys/fs/cgroup/cgroup.controllers;
       printf 'root subtree_control: '; cat /sys/fs/cgroup/cgroup.subtree_control;
       printf 'overlay: '; grep -w overlay /proc/filesystems;
       test \"\$(stat -fc %T /sys/fs/cgroup)\" = cgroup2fs" 2>&1 | sed 's/^/   | /' >&2
[ "${PIPESTATUS[0]}" = 0 ] || { FAILED_STAGE="checks"; show_vm_side; exit 1; }
token=$(in_vm 'sudo cat /etc/labkit/jupyter-token')
if curl -fsS -o /dev/null --max-time 30 -H "Authorization: token $token" "http://127.0.0.1:$LAB_JUPYTER_PORT/api/status"; then
    say "JupyterLab answers on the host at 127.0.0.1:$LAB_JUPYTER_PORT (forwarded into the VM)"
else
    FAILED_STAGE="checks"; say "JupyterLab does not answer on 127.0.0.1:$LAB_JUPYTER_PORT"; show_vm_side; exit 1
fi

stage "labkit doctor (in VM)"
if ! in_vm "cd $GUEST_DIR && sudo .venv/bin/labkit doctor" 2>&1 | tee "$LOGS/doctor.log" | sed -u 's/^/   | /' >&2 \
        || [ "${PIPESTATUS[0]}" != 0 ]; then
    FAILED_STAGE="labkit doctor"; show_vm_side; exit 1
fi

stage "lab.sh test (in VM)"
quoted=$(printf ' %q' "${TEST_ARGS[@]}")
say "./lab.sh test$quoted"
set +e
in_vm "cd $GUEST_DIR && sudo ./lab.sh test$quoted" 2>&1 | tee "$LOGS/test.log" | sed -u 's/^/   | /' >&2
test_rc=${PIPESTATUS[0]}
set -e
if [ "$test_rc" != 0 ]; then
    FAILED_STAGE="lab.sh test"; show_vm_side; exit "$test_rc"
fi
exit 0
