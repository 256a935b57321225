#!/usr/bin/env bash
# build-debian-image.sh — builds a Debian 12 cloud guest from Debian's packages only.
#
# Output (relative to the repository root; build/ is gitignored):
#   build/guest/debian-12-cloud.qcow2         compressed qcow2, 2 GiB virtual size: an MBR
#                                             (syslinux mbr.bin) and one active ext4 partition
#                                             at 1 MiB holding the whole system, booted by
#                                             EXTLINUX from that partition (SeaBIOS, boot from
#                                             disk; no direct kernel boot).
#   build/guest/debian-12-cloud.qcow2.sha256  stamp: the sha256 of this script. When it matches
#                                             and the image exists, nothing is done; FORCE=1
#                                             rebuilds anyway.
#
# The system: mmdebstrap --variant=minbase --mode=root (no recommends; docs, man pages and
# translations excluded) with systemd, udev, dbus, linux-image-cloud-amd64, cloud-init (+
# python3-serial for its CloudSigma datasource), openssh-server, ifupdown + isc-dhcp-client,
# cloud-guest-utils (growpart: the root partition grows to the drive's size), sudo.
#   - cloud-init keeps Debian's defaults: default user "debian", datasource found by ds-identify
#     (CloudSigma when the DMI product name is "CloudSigma"; it reads the context on /dev/ttyS1).
#     Added (/etc/cloud/cloud.cfg.d/90_strato.cfg): ed25519 host keys only, locale C.UTF-8,
#     manage_etc_hosts.
#   - Kernel command line: console=tty0 console=ttyS0,115200 (ttyS0 is /dev/console: boot,
#     systemd and cloud-init output on the first serial port; a login getty there).
#   - initrd: MODULES=list with virtio_pci virtio_blk virtio_scsi sd_mod (ext4 is built in).
#   - Trimmed boot: periodic timers (apt, dpkg backup, e2scrub, fstrim), getty@tty1, EFI pstore,
#     drm module loading, debugfs/tracefs mounts masked;
#     no SSH host keys in the image (cloud-init makes them on first boot); dhclient gives up
#     blocking the boot after 15 s (instead of 60) on a NIC without DHCP, and keeps trying.
#
# Needs root (mmdebstrap --mode=root; one loop device and mount, only to install EXTLINUX) and
# these Debian packages: mmdebstrap extlinux syslinux-common e2fsprogs fdisk qemu-utils.
# Network: only the Debian mirror (DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR).
#
# Usage: tests/guest/build-debian-image.sh     (from anywhere; FORCE=1 to rebuild)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=$ROOT/build/guest
IMG=$OUT/debian-12-cloud.qcow2
STAMP=$IMG.sha256
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

DISK_MIB=2048
PART_START=2048                       # sectors (1 MiB)
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
CMDLINE="ro console=tty0 console=ttyS0,115200"
PACKAGES=(systemd-sysv udev dbus linux-image-cloud-amd64 initramfs-tools cloud-init python3-serial
          openssh-server ifupdown isc-dhcp-client iproute2 netbase cloud-guest-utils e2fsprogs sudo)
# dhclient's wait before boot goes on (it keeps asking in the background): 60 s by default, which
# every NIC on a network without DHCP would add to the boot (networking.service blocks on it).
DHCP_TIMEOUT=15
INITRD_MODULES=(virtio_pci virtio_blk virtio_scsi sd_mod)
# Periodic jobs a short-lived cloud guest does not want, the VGA getty (the serial one stays), and
# early-boot work that is useless in a BIOS-booted VM without GPU (EFI pstore, drm) or is debugging only.
MASKED_UNITS=(apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer
              e2scrub_reap.service fstrim.timer getty@tty1.service
              modprobe@drm.service modprobe@efi_pstore.service systemd-pstore.service
              sys-kernel-debug.mount sys-kernel-tracing.mount)

log() { echo "build-debian-image: $*" >&2; }

SCRIPT_SHA=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
if [ "${FORCE:-0}" != 1 ] && [ -f "$IMG" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$SCRIPT_SHA" ]; then
    log "up to date: $IMG"
    exit 0
fi

[ "$(id -u)" = 0 ] || { log "needs root (mmdebstrap --mode=root, a loop mount for EXTLINUX)"; exit 1; }
for tool in mmdebstrap extlinux mkfs.ext4 sfdisk losetup qemu-img; do
    command -v "$tool" >/dev/null || { log "missing tool: $tool"; exit 1; }
done
[ -f "$MBR_BIN" ] || { log "missing $MBR_BIN (syslinux-common)"; exit 1; }

START=$(date +%s)
mkdir -p "$OUT"
WORK=$(mktemp -d "$ROOT/build/.debian-build.XXXXXX")
LOOP=
cleanup() {
    local m
    # Anything still mounted under the work directory (mmdebstrap interrupted, or our mount),
    # deepest first, then the loop device, then the files.
    for m in $(awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" || true
    done
    [ -z "$LOOP" ] || losetup -d "$LOOP" 2>/dev/null || true
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ROOTFS=$WORK/rootfs
FS_UUID=$(cat /proc/sys/kernel/random/uuid)

# --- the root file system ------------------------------------------------------------------
# Written before the packages are unpacked, so the kernel's postinst builds the small initrd once.
essential_hook() {
    cat <<EOF
mkdir -p "\$1/etc/initramfs-tools/conf.d" "\$1/usr/share/initramfs-tools/modules.d"
printf 'MODULES=list\nRESUME=none\n' > "\$1/etc/initramfs-tools/conf.d/strato.conf"
printf '%s\n' ${INITRD_MODULES[*]} > "\$1/usr/share/initramfs-tools/modules.d/strato"
EOF
}

customize_hook() {
    cat <<EOF
set -e
r="\$1"
printf 'UUID=$FS_UUID / ext4 rw,discard,errors=remount-ro 0 1\n' > "\$r/etc/fstab"
echo debian > "\$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "\$r/etc/hosts"
printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' > "\$r/etc/network/interfaces"
cat > "\$r/etc/cloud/cloud.cfg.d/90_strato.cfg" <<'CFG'
# Strato's Debian 12 image (tests/guest/build-debian-image.sh)
ssh_genkeytypes: [ed25519]
locale: C.UTF-8
manage_etc_hosts: true
CFG
mkdir -p "\$r/boot/extlinux"
cat > "\$r/boot/extlinux/extlinux.conf" <<'CFG'
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
    LINUX /vmlinuz
    INITRD /initrd.img
    APPEND root=UUID=$FS_UUID $CMDLINE
CFG
sed -i 's/^#\?timeout .*/timeout $DHCP_TIMEOUT;/' "\$r/etc/dhcp/dhclient.conf"
grep -q '^timeout $DHCP_TIMEOUT;' "\$r/etc/dhcp/dhclient.conf" || echo 'timeout $DHCP_TIMEOUT;' >> "\$r/etc/dhcp/dhclient.conf"
for u in ${MASKED_UNITS[*]}; do ln -sf /dev/null "\$r/etc/systemd/system/\$u"; done
rm -f "\$r"/etc/ssh/ssh_host_*
rm -rf "\$r"/var/cache/apt/*.bin "\$r"/var/lib/apt/lists/* "\$r"/var/log/*.log "\$r"/tmp/*
: > "\$r/etc/machine-id"
[ -e "\$r/vmlinuz" ] && [ -e "\$r/initrd.img" ]
EOF
}

log "mmdebstrap into $ROOTFS"
mmdebstrap --variant=minbase --mode=root --quiet \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --essential-hook="$(essential_hook)" \
    --customize-hook="$(customize_hook)" \
    bookworm "$ROOTFS" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY_MIRROR bookworm-security main"
log "root file system: $(du -sh "$ROOTFS" | cut -f1) after $(( $(date +%s) - START )) s"

# --- the disk: MBR + one ext4 partition at 1 MiB ---------------------------------------------
DISK=$WORK/disk.img
truncate -s "${DISK_MIB}M" "$DISK"
echo "start=$PART_START, type=83, bootable" | sfdisk --quiet --label dos "$DISK"
dd if="$MBR_BIN" of="$DISK" bs=440 count=1 conv=notrunc status=none
PART_KIB=$(( (DISK_MIB * 2048 - PART_START) / 2 ))
# No 64bit: EXTLINUX 6.04 reads plain ext4 (the limit without it is 16 TiB, far beyond any drive).
mkfs.ext4 -q -F -L debian-root -U "$FS_UUID" -O ^64bit -E offset=$((PART_START * 512)) \
    -d "$ROOTFS" "$DISK" "${PART_KIB}k"
rm -rf --one-file-system "$ROOTFS"

# EXTLINUX installs through a mounted file system (it maps its own file's blocks).
LOOP=$(losetup --find --show --offset $((PART_START * 512)) --sizelimit $((PART_KIB * 1024)) "$DISK")
mkdir "$WORK/mnt"
mount "$LOOP" "$WORK/mnt"
extlinux --install "$WORK/mnt/boot/extlinux" 2>&1 | sed 's/^/build-debian-image: extlinux: /' >&2
umount "$WORK/mnt"
losetup -d "$LOOP"
LOOP=

qemu-img convert -c -O qcow2 "$DISK" "$WORK/image.qcow2"
mv -f "$WORK/image.qcow2" "$IMG"
echo "$SCRIPT_SHA" > "$STAMP"
log "built $IMG: $(stat -c %s "$IMG") bytes (virtual ${DISK_MIB} MiB) in $(( $(date +%s) - START )) s"
