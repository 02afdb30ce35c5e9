#!/usr/bin/env bash
# Give the VM its own Python environment inside a two-way shared repository:
# bind-mount a VM-local directory over $LAB_DIR/.venv, so `lab.sh setup` in
# the VM neither sees nor overwrites a .venv made on the host (another OS,
# another Python) and runs at local-disk speed. Runs on every `vagrant up`
# (mounts do not survive a reboot). Not needed with rsync (CI mode).
set -euo pipefail
[ "${LAB_BIND_VENV:-1}" = 1 ] || exit 0
venv="$LAB_DIR/.venv"
mountpoint -q "$venv" && exit 0
install -d /var/lib/container-lab/venv
mkdir -p "$venv"
mount --bind /var/lib/container-lab/venv "$venv"
echo "[lab-vm] $venv is VM-local (/var/lib/container-lab/venv)"
