#!/usr/bin/env bash
# JupyterLab as a systemd service of the lab VM, reachable from the host's
# browser through the forwarded port (127.0.0.1:LAB_JUPYTER_PORT on the host
# -> 8888 in the VM). Runs on every `vagrant up`.
set -euo pipefail
dir=${LAB_DIR:?}
jupyter="$dir/.venv/bin/jupyter"
[ -x "$jupyter" ] || { echo "[lab-vm] ERROR: $jupyter missing: did ./lab.sh setup succeed?" >&2; exit 1; }

install -d -m 0700 /etc/container-lab
if [ ! -s /etc/container-lab/jupyter-token ]; then
    (umask 077; od -An -tx1 -N24 /dev/urandom | tr -d ' \n' > /etc/container-lab/jupyter-token)
fi
token=$(cat /etc/container-lab/jupyter-token)
(umask 077; echo "JUPYTER_TOKEN=$token" > /etc/container-lab/jupyter.env)

# Names: "containerlab-…", never "labkit…": labkit treats kernel objects
# with a labkit prefix (a service's cgroup included) as its own, and
# `labkit doctor --leaks` would report this service's cgroup as a leak.
# Root: the chapters create namespaces, cgroups, mounts and links.
# Listens on all guest addresses: VirtualBox/VMware/Parallels NAT forward to
# the guest's NIC, not to its loopback. Only the host's 127.0.0.1 is
# forwarded to it, and the token guards it.
cat > /etc/systemd/system/containerlab-jupyter.service <<UNIT
# Written by Container Lab (vagrant/provision/jupyter.sh).
[Unit]
Description=Container Lab JupyterLab
After=network-online.target
ConditionPathExists=$jupyter

[Service]
Type=simple
WorkingDirectory=$dir
EnvironmentFile=/etc/container-lab/jupyter.env
ExecStart=$jupyter lab --ip=0.0.0.0 --port=8888 --no-browser --allow-root --ServerApp.root_dir=$dir/notebooks
Restart=on-failure
# A delegated cgroup subtree: labkit may create and manage cgroups below it,
# and systemd keeps every controller enabled on the path to it.
Delegate=yes

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --quiet containerlab-jupyter.service
systemctl restart containerlab-jupyter.service

for _ in $(seq 1 300); do
    if "$dir/.venv/bin/python" - "$token" <<'PY' 2>/dev/null; then
import sys, urllib.request
req = urllib.request.Request("http://127.0.0.1:8888/api/status",
                             headers={"Authorization": "token " + sys.argv[1]})
urllib.request.urlopen(req, timeout=5)
PY
        echo "[lab-vm] JupyterLab is up (service containerlab-jupyter, guest port 8888)"
        exit 0
    fi
    systemctl is-failed --quiet containerlab-jupyter.service && break
    sleep 1
done
echo "[lab-vm] ERROR: JupyterLab did not answer on port 8888" >&2
journalctl -u containerlab-jupyter.service -n 60 --no-pager >&2 || true
exit 1
