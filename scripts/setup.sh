#!/usr/bin/env bash
# Prepares this Debian machine for Strato: system packages, the virtual environment,
# the libvirt daemons and the test guest image. Idempotent: each step is skipped when done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    # hypervisor host
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
    # building libvirt-python in the venv
    libvirt-dev pkg-config gcc python3-dev python3-venv
    # the test guest image (tests/guest/build-image.sh)
    linux-image-cloud-amd64 busybox-static syslinux syslinux-common mtools dosfstools cpio gzip
    # the Debian 12 cloud guest (tests/guest/build-debian-image.sh; also syslinux-common, qemu-utils)
    mmdebstrap extlinux e2fsprogs fdisk
    # remote hosts over SSH, PostgreSQL store tests, networking
    openssh-server openssh-client postgresql dnsmasq-base iproute2
    # the browser console (noVNC) and the headless browser that tests it
    novnc chromium
    # Ceph RBD drives: a one-machine test cluster (tests/ceph), libvirt's rbd pool and QEMU's rbd
    # block driver. Installed before libvirtd starts: a libvirtd started without the rbd driver
    # reports rbd pools unsupported until it is restarted.
    ceph-mon ceph-osd ceph-mgr ceph-common libvirt-daemon-driver-storage-rbd qemu-block-extra
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.strato-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    touch "$stamp"
fi

# This machine is also a hypervisor host: the same preparation an operator runs on each host
# (libvirt, QEMU, the agent user, the daemons started even without systemd). Nested KVM guests
# hang on these build machines, so tests and the default local host use software emulation.
STRATO_NO_KVM=${STRATO_NO_KVM:-1} deploy/prepare-host.sh

# The test guest: a tiny bootable disk built from Debian packages.
tests/guest/build-image.sh
# A real guest: a Debian 12 cloud disk with cloud-init, from Debian's packages (~1.5 min the first
# time, needs the Debian mirror; cached afterwards).
tests/guest/build-debian-image.sh
