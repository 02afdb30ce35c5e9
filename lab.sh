#!/usr/bin/env bash
# Container Lab set-up. As root on a fresh Debian 12 / Ubuntu 24.04 machine:
#   ./lab.sh start          set up, then JupyterLab on 127.0.0.1 with the notebooks
#   ./lab.sh test [ARGS]    set up, then the whole test suite (pytest ARGS if given);
#                           on a host that is not cgroup v2, in CI (CI=true) or with
#                           LAB_VM_TESTS=1 also the cgroup v2 run in the Vagrant VM
#                           (~30 min; LAB_VM_TESTS=0 skips it)
#   ./lab.sh setup          set up only (apt packages, .venv, pip install -e .[all])
#   ./lab.sh packages       print the Debian packages set-up installs (the CI box has them built in)
#   ./lab.sh venv           only .venv (LAB_VENV=DIR elsewhere; LAB_WHEELS=DIR: offline, from wheels)
# Each step is idempotent: a second run checks and skips in seconds.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
HERE=$PWD
VENV=${LAB_VENV:-$HERE/.venv}
PY=${LAB_PYTHON:-/usr/bin/python3}
APT_PACKAGES=(python3 python3-venv python3-dev gcc busybox-static runc crun iproute2 nftables
              util-linux kmod procps ca-certificates
              libseccomp2  # labkit.seccomp compiles linux.seccomp with it, as runc and crun do
              docker-registry skopeo openssl  # chapter 05 / labkit.registry: a loopback registry and a peer
              # peers the tests compare labkit with: engines that drive labkit-runc, image tools
              podman containerd umoci buildah oci-image-tool
              tini  # labkit run --init: docker-init is tini (its static build goes into the container)
              curl)  # the README's published-port example
DISABLED_SERVICES=(docker-registry containerd)  # the lab runs its own, on loopback or a private socket

say() { printf '\033[1m[lab]\033[0m %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    say "Container Lab creates namespaces, mounts and cgroups: run me as root (sudo $0 $*)"
    exit 1
  fi
}

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    disable_services
  fi
}

disable_services() {
  # docker-registry's package starts a registry on :5000 (all interfaces) and containerd's a
  # daemon on the machine's socket; the lab's tests start their own, privately.
  command -v systemctl >/dev/null || return 0
  systemctl disable --now "${DISABLED_SERVICES[@]}" >/dev/null 2>&1 || true
}

install_venv() {
  [ -x "$VENV/bin/python" ] || { say "creating $VENV with $PY"; "$PY" -m venv "$VENV"; }
  local stamp="$VENV/.labkit-stamp" want
  want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing labkit and its Python dependencies into $VENV"
    if [ -n "${LAB_WHEELS:-}" ]; then  # offline, from a wheel directory (the CI box is built so)
      "$VENV/bin/pip" install -q --no-index --find-links "$LAB_WHEELS" -e ".[all]"
    else
      "$VENV/bin/pip" install -q --upgrade pip
      "$VENV/bin/pip" install -q -e ".[all]"
    fi
    echo "$want" > "$stamp"
  fi
  # Byte-compile labkit: every container start runs a fresh interpreter (the shim), and
  # where PYTHONDONTWRITEBYTECODE is set nothing would cache the compiled modules otherwise.
  "$VENV/bin/python" -m compileall -q labkit >/dev/null
}

setup() {
  need_root "$@"
  install_apt
  modprobe overlay 2>/dev/null || true
  install_venv
}

start() {
  setup
  say "starting JupyterLab on http://127.0.0.1:${LAB_PORT:-8888} (open the URL with the token printed below)"
  exec "$VENV/bin/jupyter" lab --allow-root --no-browser --ip 127.0.0.1 --port "${LAB_PORT:-8888}" \
    --ServerApp.root_dir="$HERE/notebooks"
}

run_tests() {
  setup
  local rc=0
  "$VENV/bin/python" -m pytest "$@" || rc=$?
  if [ "$rc" = 5 ]; then say "pytest collected no tests for: $*"; rc=0; fi
  return "$rc"
}

test_all() {
  if [ $# -gt 0 ]; then run_tests "$@"; return; fi
  local t0=$SECONDS rc=0
  run_tests || rc=$?
  say "host test suite (cgroup $(stat -fc %T /sys/fs/cgroup | sed 's/cgroup2fs/v2/;s/tmpfs/v1 hybrid/')): $((SECONDS - t0)) s"
  # Both cgroup versions are proven on every full run: a host that is not cgroup v2 (like
  # the CI machine, v1 hybrid) also runs the `vm` tests in the students' Vagrant VM on v2
  # (~30 min). CI=true or LAB_VM_TESTS=1 asks for that stage anywhere; LAB_VM_TESTS=0 skips it.
  local vm=${LAB_VM_TESTS:-}
  if [ -z "$vm" ]; then
    if [ "${CI:-}" = true ] || [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then vm=1; else vm=0; fi
  fi
  if [ "$vm" = 1 ]; then
    t0=$SECONDS
    vagrant/ci/run-in-vm.sh -m vm tests/integration notebooks || rc=$?
    say "cgroup v2 stage in the Vagrant VM: $((SECONDS - t0)) s"
  fi
  return "$rc"
}

case "${1:-}" in
  setup) shift; setup "$@" ;;
  packages) echo "${APT_PACKAGES[*]}" ;;
  venv) shift; need_root venv; install_venv ;;
  start) shift; start "$@" ;;
  test) shift; test_all "$@" ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
