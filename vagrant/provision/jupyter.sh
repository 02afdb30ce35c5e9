#!/usr/bin/env bash
# JupyterLab as a systemd service of the lab VM, reachable from the host's
# browser through the forwarded port (127.0.0.1:LAB_JUPYTER_PORT on the host
# -> 8888 in the VM). Runs on every `vagrant up`.
set -euo pipefail
dir=${LAB_DIR:?}
jupyter="$dir/.venv/bin/jupyter"
[ -x "$jupyter" ] || { echo "[labkit-vm] ERROR: $jupyter missing: did ./lab.sh setup succeed?" >&2; exit 1; }

install -d -m 0700 /etc/labkit
if [ ! -s /etc/labkit/jupyter-token ]; then
    (umask 077; od -An -tx1 -N24 /dev/urandom | tr -d ' \n' > /etc/labkit/jupyter-token)
fi
token=$(cat /etc/labkit/jupyter-token)
(umask 077; echo "JUPYTER_TOKEN=$token" > /etc/labkit/jupyter.env)

# Root: the chapters create namespaces, cgroups, mounts and links.
# Listens on all guest addresses: VirtualBox/VMware/Parallels NAT forward to
# the guest's NIC, not to its loopback. Only the host's 127.0.0.1 is
# forwarded to it, and the token guards it.
cat > /etc/systemd/system/labkit-jupyter.service <<UNIT
# Written by Container Lab (vagrant/provision/jupyter.sh).
[Unit]
Description=Container Lab JupyterLab
After=network-online.target
ConditionPathExists=$jupyter

[Service]
Type=simple
WorkingDirectory=$dir
EnvironmentFile=/etc/labkit/jupyter.env
ExecStart=$jupyter lab --ip=0.0.0.0 --port=8888 --no-browser --allow-root --ServerApp.root_dir=$dir
Restart=on-failure
# A delegated cgroup subtree: labkit may create and manage cgroups below it,
# and systemd keeps every controller enabled on the path to it.
Delegate=yes

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --quiet labkit-jupyter.service
systemctl restart labkit-jupyter.service

for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null -H "Authorization: token $token" http://127.0.0.1:8888/api/status 2>/dev/null; then
        echo "[labkit-vm] JupyterLab is up (service labkit-jupyter, guest port 8888)"
        exit 0
    fi
    systemctl is-failed --quiet labkit-jupyter.service && break
    sleep 1
done
echo "[labkit-vm] ERROR: JupyterLab did not answer on port 8888" >&2
journalctl -u labkit-jupyter.service -n 60 --no-pager >&2 || true
exit 1
