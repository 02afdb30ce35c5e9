#!/usr/bin/env bash
# Build a minimal Debian 12 (bookworm) Vagrant box for the libvirt provider,
# from Debian's own packages only (no box download: this CI machine reaches
# nothing but the package mirrors).
#
#   vagrant/ci/build-box.sh OUTPUT.box
#
# What is in the box: Debian bookworm (debootstrap), linux-image-amd64,
# systemd, openssh-server, sudo, rsync, ifupdown + dhclient (eth0 by DHCP),
# a `vagrant` user (password "vagrant", passwordless sudo) whose
# authorized_keys holds Vagrant's well-known insecure public key, shipped by
# the Debian `vagrant` package (Vagrant replaces it on the first `vagrant up`).
# And the lab's own set-up, done here at native speed rather than in the VM
# under emulation, where it took ~10 minutes: the Debian packages
# `lab.sh packages` names, and the Python environment `lab.sh venv` makes, at
# /var/lib/container-lab/venv (the VM binds it over the repository's .venv),
# from wheels built on this host. `lab.sh setup` in the VM then finds both
# done and skips them.
#
# Two quirks of the CI host shape how the disk is made:
#  * its kernel does not scan partition tables on loop devices (no loopXp1),
#    so the root partition is attached with `losetup -o OFFSET --sizelimit`;
#  * grub-install needs a real disk device, so GRUB's boot code is written
#    with grub-mkimage (core.img, all modules the boot needs embedded) + dd:
#    boot.img into the MBR code area, core.img into the gap after it.
#    boot.img's default "kernel sector" is 1 and grub-mkimage fills in the
#    length of core.img in diskboot's block list, so no patching is needed.
#
# All mounts are made inside a private mount namespace (unshare -m), so they
# vanish with the build process even if it is killed; the loop device is
# detached by a trap. Needs root, debootstrap, fdisk (sfdisk), e2fsprogs,
# grub-pc-bin + grub-common (grub-mkimage), qemu-utils, bsdtar or tar.
set -euo pipefail

out=${1:?usage: build-box.sh OUTPUT.box}
REPO=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
# debootstrap resolves plain dependencies only: a virtual one is named here, as apt picks it
# (podman's container-network-stack: containernetworking-plugins).
LAB_PACKAGES=$("$REPO/lab.sh" packages | tr ' ' ','),containernetworking-plugins
# The Debian mirrors this host's own apt uses (deb822 "URIs:" or one-line "deb URL").
host_apt_uris() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p'
}
: "${LAB_BOX_MIRROR:=$(host_apt_uris | grep -v security | head -n1)}"
: "${LAB_BOX_SECURITY_MIRROR:=$(host_apt_uris | grep security | head -n1)}"
[ -n "$LAB_BOX_MIRROR" ] || { echo "build-box.sh: no Debian mirror in this host's apt sources; set LAB_BOX_MIRROR" >&2; exit 1; }
: "${LAB_BOX_SUITE:=bookworm}"
: "${LAB_BOX_DISK_GB:=20}"

[ "$(id -u)" = 0 ] || { echo "build-box.sh: must run as root" >&2; exit 1; }

# Re-exec inside a private mount namespace: every mount below dies with us.
if [ -z "${_LAB_BOX_IN_NS:-}" ]; then
    exec env _LAB_BOX_IN_NS=1 unshare --mount --propagation private -- "$0" "$@"
fi

pubkey=""
for k in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
         /usr/share/vagrant/keys/vagrant.pub /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
    [ -f "$k" ] && { pubkey=$k; break; }
done
[ -n "$pubkey" ] || { echo "build-box.sh: Vagrant's insecure public key not found (install the vagrant package)" >&2; exit 1; }

work=$(mktemp -d "$(dirname "$(readlink -f "$out")")/.box-build.XXXXXX")
loop=""
cleanup() {
    set +e
    if [ -n "$loop" ]; then
        umount -R "$work/mnt" 2>/dev/null
        losetup -d "$loop"
    fi
    # Never rm -rf through a mount point that is still there.
    if grep -q " $work/" /proc/self/mountinfo; then
        echo "build-box.sh: mounts remain under $work; left it in place" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[build-box %(%H:%M:%S)T] %s\n' -1 "$*"; }

disk=$work/disk.raw
start_sector=2048
truncate -s "${LAB_BOX_DISK_GB}G" "$disk"
printf 'label: dos\nstart=%s, type=83, bootable\n' "$start_sector" | sfdisk -q "$disk"
size_bytes=$(stat -c %s "$disk")
offset=$((start_sector * 512))
loop=$(losetup -f --show -o "$offset" --sizelimit "$((size_bytes - offset))" "$disk")
log "root partition on $loop (offset $offset)"
mkfs.ext4 -q -L labkit-root "$loop"
uuid=$(blkid -s UUID -o value "$loop")
mkdir -p "$work/mnt"
mount "$loop" "$work/mnt"
root=$work/mnt

log "debootstrap $LAB_BOX_SUITE from $LAB_BOX_MIRROR"
debootstrap --variant=minbase \
    --include=systemd-sysv,udev,kmod,ifupdown,isc-dhcp-client,iproute2,netbase,procps,iputils-ping,dbus,linux-image-amd64,openssh-server,sudo,rsync,ca-certificates,curl,less,zstd,"$LAB_PACKAGES" \
    "$LAB_BOX_SUITE" "$root" "$LAB_BOX_MIRROR" > "$work/debootstrap.log" 2>&1 \
    || { tail -40 "$work/debootstrap.log" >&2; [ -f "$root/debootstrap/debootstrap.log" ] && tail -40 "$root/debootstrap/debootstrap.log" >&2; exit 1; }
log "debootstrap done"

cat > "$root/etc/apt/sources.list" <<EOF
deb $LAB_BOX_MIRROR $LAB_BOX_SUITE main
deb $LAB_BOX_MIRROR $LAB_BOX_SUITE-updates main
${LAB_BOX_SECURITY_MIRROR:+deb $LAB_BOX_SECURITY_MIRROR $LAB_BOX_SUITE-security main}
EOF
printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$uuid" > "$root/etc/fstab"
echo labkit > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tlabkit\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
cat > "$root/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp
EOF
echo 'LANG=C.UTF-8' > "$root/etc/default/locale"

# Speed under software emulation (TCG), where every fsync and every process
# costs 10x: dpkg without fsync (a throw-away CI VM), no translations, and
# no initramfs rebuild each time a package (busybox, a kernel module
# package) triggers one — the initramfs made here boots this box's kernel.
echo force-unsafe-io > "$root/etc/dpkg/dpkg.cfg.d/labkit-unsafe-io"
echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/80labkit-no-translations"
sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$root/etc/initramfs-tools/update-initramfs.conf"
grep -q '^update_initramfs=no' "$root/etc/initramfs-tools/update-initramfs.conf"

# The vagrant user, the Vagrant convention for base boxes.
chroot "$root" useradd -m -s /bin/bash -U vagrant
echo 'vagrant:vagrant' | chroot "$root" chpasswd
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' > "$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$pubkey" "$root/home/vagrant/.ssh/authorized_keys"
echo 'UseDNS no' > "$root/etc/ssh/sshd_config.d/vagrant.conf"

# Fresh SSH host keys on each VM's first boot, not one set baked into the box.
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
ln -s /etc/systemd/system/ssh-hostkeys.service "$root/etc/systemd/system/multi-user.target.wants/ssh-hostkeys.service"
# A fresh machine-id per VM too.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# GRUB (BIOS): config + modules on the root fs, boot code written with dd.
kernel_args="root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"
mkdir -p "$root/boot/grub/i386-pc"
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$root/boot/grub/i386-pc/"
cat > "$root/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
menuentry 'Debian GNU/Linux ($LAB_BOX_SUITE, labkit box)' {
    insmod part_msdos
    insmod ext2
    search --no-floppy --fs-uuid --set=root $uuid
    linux /vmlinuz $kernel_args
    initrd /initrd.img
}
EOF
grub-mkimage -O i386-pc -o "$work/core.img" -p '(hd0,msdos1)/boot/grub' \
    biosdisk part_msdos ext2 search search_fs_uuid normal linux configfile echo test gzio serial terminal
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
[ "$core_sectors" -lt "$((start_sector - 1))" ] || { echo "core.img too large ($core_sectors sectors)" >&2; exit 1; }
dd if=/usr/lib/grub/i386-pc/boot.img of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$disk" bs=512 seek=1 conv=notrunc status=none

# The lab's Python environment, from wheels built here (the chroot needs no network).
log "the lab's Python environment"
wheels=$work/wheels
# setuptools: the editable install builds labkit in the chroot (pyproject.toml's build-system).
"$REPO/.venv/bin/pip" wheel -q --wheel-dir "$wheels" "$REPO[all]" "setuptools>=61" wheel > "$work/wheels.log" 2>&1 \
    || { tail -20 "$work/wheels.log" >&2; exit 1; }
src=$root/home/vagrant/container-lab
install -d "$src" "$root/var/cache/labkit-wheels"
cp -a "$REPO/lab.sh" "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/labkit" "$src/"
cp "$wheels"/*.whl "$root/var/cache/labkit-wheels/"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LAB_VENV=/var/lib/container-lab/venv LAB_WHEELS=/var/cache/labkit-wheels \
    /home/vagrant/container-lab/lab.sh venv > "$work/venv.log" 2>&1 || { tail -20 "$work/venv.log" >&2; exit 1; }
umount -R "$root/dev"
umount "$root/proc"
rm -rf "$src" "$root/var/cache/labkit-wheels"   # the VM gets the repository by rsync
install -d -o 1000 -g 1000 "$src"
# Their services stay off, as lab.sh leaves them: the tests start their own, privately.
chroot "$root" systemctl disable docker-registry containerd > /dev/null 2>&1 || true
log "lab packages and Python environment done"

# Slim down: the VM runs `apt-get update` itself.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
rm -f "$root/etc/resolv.conf"   # dhclient writes it on boot

# Give the blocks of deleted files (debootstrap's .debs) back to the sparse
# image, so qemu-img writes only live data into the box.
sync
fstrim "$root" || true
umount -R "$root"
losetup -d "$loop"; loop=""
log "filesystem done; converting to qcow2"

qemu-img convert -f raw -O qcow2 "$disk" "$work/box.img"
rm -f "$disk"
cat > "$work/metadata.json" <<EOF
{"provider": "libvirt", "format": "qcow2", "virtual_size": $LAB_BOX_DISK_GB}
EOF
cat > "$work/Vagrantfile" <<'EOF'
# Defaults shipped inside the labkit CI box (the project's Vagrantfile wins).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF
tar -C "$work" -cf "$out.tmp" metadata.json Vagrantfile box.img
mv -f "$out.tmp" "$out"
log "box written: $out ($(du -h "$out" | cut -f1))"
