#!/usr/bin/env bash
# Kernel-side preparation of the lab VM (run once, as root, by Vagrant).
# Idempotent: safe to run again with `vagrant provision`.
set -euo pipefail
log() { echo "[lab-vm] $*"; }
die() { echo "[lab-vm] ERROR: $*" >&2; exit 1; }

# Extra CA certificates handed over by the Vagrantfile (LAB_EXTRA_CA_DIR),
# e.g. a TLS-inspecting proxy's, so apt and pip can reach their servers.
if compgen -G "/tmp/labkit-extra-ca/*.crt" > /dev/null; then
    install -d /usr/local/share/ca-certificates/labkit-extra
    install -m 0644 /tmp/labkit-extra-ca/*.crt /usr/local/share/ca-certificates/labkit-extra/
    rm -rf /tmp/labkit-extra-ca
    update-ca-certificates > /dev/null
    log "extra CA certificates trusted: $(ls /usr/local/share/ca-certificates/labkit-extra | tr '\n' ' ')"
fi
# pip uses its own CA bundle unless told otherwise: use the system's.
if [ ! -e /etc/pip.conf ]; then
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf
fi

# Kernel modules the chapters need that are not always auto-loaded.
echo overlay > /etc/modules-load.d/labkit.conf
modprobe overlay
log "overlay module loaded"

# cgroup v2 only: the lab VM is where chapter 03 proves cgroup v2.
fstype=$(stat -fc %T /sys/fs/cgroup)
[ "$fstype" = cgroup2fs ] || die "/sys/fs/cgroup is $fstype, not cgroup2fs (cgroup v1/hybrid): boot with systemd.unified_cgroup_hierarchy=1 or use a current box"
available=$(cat /sys/fs/cgroup/cgroup.controllers)
for c in cpuset cpu io memory pids; do
    case " $available " in *" $c "*) ;; *) die "cgroup v2 controller '$c' is not available in /sys/fs/cgroup/cgroup.controllers ($available)";; esac
done

# labkit enables the controllers it needs (cpuset cpu io memory pids) in
# /sys/fs/cgroup/cgroup.subtree_control itself. systemd rewrites the root's
# subtree_control from what its own units need whenever it re-realizes the
# root slice, and would switch off controllers that no unit of its uses.
# Make systemd want them too, so it never takes them away:
#  * io memory pids: accounting on by default for every unit (systemd 252
#    counts CPU time without the cpu controller, so that alone is not enough);
#  * cpu, cpuset (and again io memory pids): containerlab.slice below sets
#    CPUWeight= and AllowedCPUs=, which only these controllers implement,
#    and is started at boot; the JupyterLab service is also a delegated unit
#    (Delegate=yes, see jupyter.sh).
# (Not named labkit*: labkit owns, and reports as leaks, labkit-named cgroups.)
install -d /etc/systemd/system.conf.d
cat > /etc/systemd/system.conf.d/50-labkit-cgroups.conf <<'CONF'
# Written by Container Lab (vagrant/provision/system.sh).
[Manager]
DefaultCPUAccounting=yes
DefaultIOAccounting=yes
DefaultMemoryAccounting=yes
DefaultTasksAccounting=yes
CONF
cat > /etc/systemd/system/containerlab.slice <<CONF
# Written by Container Lab (vagrant/provision/system.sh): keeps the cpuset
# controller enabled at the cgroup root for labkit's own subtree.
[Unit]
Description=Container Lab (keeps cgroup v2 controllers enabled for labkit)

[Slice]
CPUWeight=100
AllowedCPUs=0-$(( $(nproc --all) - 1 ))
IOAccounting=yes
MemoryAccounting=yes
TasksAccounting=yes
CONF
systemctl daemon-reexec
systemctl start containerlab.slice
# Slices cannot be enabled; pull it in at boot with a drop-in instead.
install -d /etc/systemd/system/multi-user.target.wants
ln -sf /etc/systemd/system/containerlab.slice /etc/systemd/system/multi-user.target.wants/containerlab.slice
got=$(cat /sys/fs/cgroup/cgroup.subtree_control)
for c in cpuset cpu io memory pids; do
    case " $got " in *" $c "*) ;; *) die "controller '$c' is not enabled in /sys/fs/cgroup/cgroup.subtree_control ($got)";; esac
done
log "cgroup2fs; root subtree_control: $got"

# `vagrant ssh` lands in the repository.
if ! grep -q container-lab /home/vagrant/.bashrc 2>/dev/null; then
    printf '\n# Container Lab\n[ -d "%s" ] && cd "%s"\n' "$LAB_DIR" "$LAB_DIR" >> /home/vagrant/.bashrc
fi
