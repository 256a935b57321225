#!/usr/bin/env bash
# build-image.sh — builds the Strato test guest from Debian packages only.
#
# Outputs (relative to the repository root; build/ is gitignored):
#   build/guest/strato-guest.img  32 MiB raw disk: MBR (syslinux mbr.bin) + one
#                                 bootable FAT16 partition at 1 MiB holding
#                                 SYSLINUX, vmlinuz, initrd.img, syslinux.cfg.
#                                 Boots under SeaBIOS (libvirt type 'qemu'/TCG).
#   build/guest/vmlinuz           the kernel, for direct kernel boot
#   build/guest/initrd.img        the initramfs, for direct kernel boot
#   build/guest/cmdline           the kernel command line (console=ttyS0 quiet)
#
# Needs (Debian packages): linux-image-cloud-amd64, busybox-static, syslinux,
# syslinux-common, mtools, dosfstools, cpio, gzip. No root mounts, no loop
# devices, no root privileges. Idempotent: does nothing when every output is
# newer than every input (this script, init, syslinux.cfg, kernel, modules,
# busybox, syslinux files); FORCE=1 rebuilds anyway.
#
# Kernel: the newest /boot/vmlinuz-*-cloud-amd64. The initramfs is busybox-static
# plus tests/guest/init as /init plus these modules with their dependencies
# (dependency order from modules.dep, loaded by /init with insmod; a modules.dep
# made with depmod -b is included too so modprobe also works):
#   scsi_mod (scan=manual) sd_mod sr_mod cdrom libata ata_piix ata_generic ahci
#   virtio_pci virtio_blk virtio_scsi virtio_net button evdev
# e1000, 8139cp and 8139too are NOT available in the Debian cloud kernel
# (CONFIG_E1000 and CONFIG_NET_VENDOR_REALTEK are off): use virtio NICs.
#
# What the guest does (/init): mounts proc/sys/devtmpfs, loads the modules,
# waits <= 1 s for block/net devices to settle, prints the report below on
# ttyS0, starts the power-button watcher, prints STRATO-READY and idles.
#
# Report format (one line each, in this order):
#   STRATO-REPORT-BEGIN
#   cpus=<online cpu count>
#   sockets=<distinct physical_package_id count>
#   cores_per_socket=<distinct core_id within cpu0's package>
#   threads_per_core=<cpus in cpu0's thread_siblings_list>
#   numa_nodes=<count of /sys/devices/system/node/node*>
#   numa node=<id> cpus=<cpulist> mem_kib=<node MemTotal in kB>     (per node, by id)
#   block name=<dev> bus=<virtio|ata|scsi> ro=<0|1> size=<bytes> hctl=<H:C:T:L|-> pci=<addr|-> marker=<marker|none>
#                      (per block device except ram*/loop*/zram*: vd* sorted by
#                       name, then sd*/sr* sorted by name, then anything else)
#   nic name=<ifname> mac=<mac> driver=<driver|->     (per interface except lo, by name)
#   dmi_product=<contents of /sys/class/dmi/id/product_name, to end of line>
#   STRATO-REPORT-END
#   STRATO-READY
#
#   virtio-scsi: only targets 0-7 (all LUNs) are scanned, to keep boot fast;
#           libvirt puts virtio-scsi disks on target 0 with unit = LUN.
#   bus:    virtio = virtio-blk (vdX); ata = sysfs path goes through an ataN
#           port (ata_piix IDE, ahci); scsi = any other SCSI host (virtio-scsi).
#   size:   /sys/block/<dev>/size * 512; 0 for a cdrom drive without medium.
#   threads_per_core etc. are what the guest kernel sees: with libvirt's
#           qemu64 model (AMD vendor, no topoext) SMT threads show up as cores;
#           an Intel model (e.g. Nehalem) reports threads correctly.
#   hctl:   SCSI address of sdX/srX, "-" for virtio-blk.
#   pci:    the last PCI address in the device's sysfs path (the controller:
#           virtio-blk function, IDE controller, virtio-scsi HBA).
#   marker: if the first 512 bytes of the device start with "STRATO-MARKER:",
#           the text after it up to the first newline or NUL, provided it is
#           non-empty and only [A-Za-z0-9._-]; otherwise "none" (also for
#           unreadable devices such as an empty cdrom).
#
# Power button: an ACPI power-button press (virsh shutdown --mode acpi,
# QMP system_powerdown) arrives as KEY_POWER on the "Power Button" input
# device; the guest prints STRATO-POWEROFF on ttyS0 and runs poweroff -f.
# If any block device has marker "ignore-acpi", presses are ignored and
# the guest prints STRATO-POWERBUTTON-IGNORED for each press instead.
#
# Network (after STRATO-READY, so the report above is not delayed): every
# NIC except lo is brought up. A block device whose first bytes are
# "STRATO-NETCONF:" carries newline-separated directives (the first line is
# the header itself; the text ends at the first NUL):
#   addr IFNAME ADDRESS/PREFIX   give IFNAME this address (no DHCP on it)
#   ping ADDRESS TRIES           ping ADDRESS once a second until it answers,
#                                at most TRIES times (in the background)
#   beat ADDRESS                 ping ADDRESS every second forever (traffic)
# Every other NIC runs udhcpc (3 tries, 1 s apart; the script is
# tests/guest/udhcpc.script at /usr/share/udhcpc/default.script). Then:
#   net name=<ifname> mac=<mac> ip=<address/prefix|none>   (per NIC, by name)
#   STRATO-NET-DONE
#   ping addr=<address> result=<ok|fail>                    (per ping, when done)
#
# Usage: tests/guest/build-image.sh      (from anywhere; FORCE=1 to rebuild)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=$ROOT/build/guest
IMG=$OUT/strato-guest.img
CMDLINE="console=ttyS0 quiet"

DISK_MIB=32
PART_START=2048                                   # sectors (1 MiB)
DISK_SECTORS=$((DISK_MIB * 2048))
PART_SECTORS=$((DISK_SECTORS - PART_START))
PART_OFFSET=$((PART_START * 512))

WANTED_MODULES=(scsi_mod sd_mod sr_mod cdrom libata ata_piix ata_generic ahci
                virtio_pci virtio_blk virtio_scsi virtio_net
                e1000 8139cp 8139too button evdev)
# scan=manual: a full virtio-scsi scan probes all 256 targets and takes ~10 s
# under TCG; /init scans only targets 0-7 of each virtio-scsi host instead.
# (libata adds its devices explicitly and is not affected.)
declare -A MODULE_PARAMS=([scsi_mod]="scan=manual")

BUSYBOX=/usr/bin/busybox
[ -x /bin/busybox ] && BUSYBOX=/bin/busybox
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin

log() { echo "build-image: $*" >&2; }

# --- newest cloud kernel ------------------------------------------------------
KERNEL=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$KERNEL" ] || { log "no /boot/vmlinuz-*-cloud-amd64 (install linux-image-cloud-amd64)"; exit 1; }
KVER=${KERNEL#/boot/vmlinuz-}
MODDIR=/lib/modules/$KVER
[ -f "$MODDIR/modules.dep" ] || { log "missing $MODDIR/modules.dep"; exit 1; }

for tool in mkfs.fat syslinux mcopy cpio gzip depmod; do
    command -v "$tool" >/dev/null || { log "missing tool: $tool"; exit 1; }
done
[ -f "$MBR_BIN" ] || { log "missing $MBR_BIN (syslinux-common)"; exit 1; }

# --- up to date? --------------------------------------------------------------
INPUTS=("$HERE/build-image.sh" "$HERE/init" "$HERE/udhcpc.script" "$HERE/syslinux.cfg" "$KERNEL"
        "$MODDIR/modules.dep" "$BUSYBOX" "$MBR_BIN" "$(command -v syslinux)")
OUTPUTS=("$IMG" "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/cmdline")
up_to_date() {
    local o
    for o in "${OUTPUTS[@]}"; do
        [ -f "$o" ] || return 1
        [ -z "$(find -L "${INPUTS[@]}" -newer "$o" 2>/dev/null)" ] || return 1
    done
}
if [ "${FORCE:-0}" != 1 ] && up_to_date; then
    log "up to date: $IMG"
    exit 0
fi

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- module closure in dependency order ---------------------------------------
declare -A DEP_OF=() PATH_OF=() SEEN=()
while IFS= read -r line; do
    rel=${line%%:*}
    base=${rel##*/}
    name=${base%.ko*}
    name=${name//-/_}
    PATH_OF[$name]=$rel
    DEP_OF[$rel]=${line#*:}
done < "$MODDIR/modules.dep"

LOAD_ORDER=()
visit() {              # $1 = path relative to MODDIR; deps first, then itself
    local rel=$1 d
    [ -n "${SEEN[$rel]:-}" ] && return 0
    SEEN[$rel]=1
    for d in ${DEP_OF[$rel]}; do visit "$d"; done
    LOAD_ORDER+=("$rel")
}
for m in "${WANTED_MODULES[@]}"; do
    if [ -n "${PATH_OF[$m]:-}" ]; then
        visit "${PATH_OF[$m]}"
    elif grep -qE "/$m\.ko" "$MODDIR/modules.builtin" 2>/dev/null; then
        log "module $m is built into $KVER"
    else
        log "module $m is not available in $KVER (skipped)"
    fi
done

# --- initramfs ----------------------------------------------------------------
IR=$WORK/initramfs
mkdir -p "$IR"/{bin,dev,proc,sys,tmp,run,etc,lib/modules/"$KVER"}
cp "$BUSYBOX" "$IR/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$IR/bin/$applet"
done
ln -s bin "$IR/sbin"
install -m 0755 "$HERE/init" "$IR/init"
mkdir -p "$IR/usr/share/udhcpc"
install -m 0755 "$HERE/udhcpc.script" "$IR/usr/share/udhcpc/default.script"
: > "$IR/lib/modules/load-order"
for rel in "${LOAD_ORDER[@]}"; do
    mkdir -p "$IR/lib/modules/$KVER/$(dirname "$rel")"
    cp "$MODDIR/$rel" "$IR/lib/modules/$KVER/$rel"
    name=${rel##*/}; name=${name%.ko*}; name=${name//-/_}
    echo "$rel ${MODULE_PARAMS[$name]:-}" >> "$IR/lib/modules/load-order"
done
for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ -f "$MODDIR/$f" ] && cp "$MODDIR/$f" "$IR/lib/modules/$KVER/"
done
depmod -b "$IR" "$KVER"
(cd "$IR" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc --owner=0:0 --reproducible) | gzip -9n > "$WORK/initrd.img"
cp "$KERNEL" "$WORK/vmlinuz"
echo "$CMDLINE" > "$WORK/cmdline"

# --- disk image: MBR + FAT16 partition at 1 MiB -------------------------------
sed "s|@CMDLINE@|$CMDLINE|" "$HERE/syslinux.cfg" > "$WORK/syslinux.cfg"
DISK=$WORK/disk.img
truncate -s "${DISK_MIB}M" "$DISK"
mkfs.fat -F 16 -n STRATO -i 5752a700 -h "$PART_START" --offset "$PART_START" \
    "$DISK" $((PART_SECTORS / 2)) >/dev/null
syslinux --install --offset "$PART_OFFSET" "$DISK"
export MTOOLS_SKIP_CHECK=1
mcopy -o -i "$DISK@@$PART_OFFSET" "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/syslinux.cfg" ::/
dd if="$MBR_BIN" of="$DISK" bs=440 count=1 conv=notrunc status=none

le32() {               # little-endian 32-bit as \x escapes
    printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) \
        $((($1 >> 16) & 255)) $((($1 >> 24) & 255))
}
# Disk signature, then one active partition entry (type 0x0e = FAT16 LBA,
# CHS fields set to the "use LBA" value fe ff ff), empty entries, 55 aa.
{
    printf '\x53\x54\x52\x41\x00\x00'                       # offset 440: signature + 2 zero bytes
    printf "\\x80\\xfe\\xff\\xff\\x0e\\xfe\\xff\\xff$(le32 $PART_START)$(le32 $PART_SECTORS)"
    head -c 48 /dev/zero
    printf '\x55\xaa'
} | dd of="$DISK" bs=1 seek=440 conv=notrunc status=none

SIZE=$(stat -c %s "$DISK")
[ "$SIZE" -le $((48 * 1024 * 1024)) ] || { log "image too large: $SIZE"; exit 1; }

mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
mv -f "$WORK/cmdline" "$OUT/cmdline"
mv -f "$DISK" "$IMG"
touch "${OUTPUTS[@]}"
log "built $IMG ($KVER; initrd $(stat -c %s "$OUT/initrd.img") bytes; modules: ${#LOAD_ORDER[@]})"
