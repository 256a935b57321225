#!/usr/bin/env bash
# Prepares a Debian machine to be a Strato hypervisor host: libvirt + QEMU, the agent's user,
# the API node's SSH key authorised for it, the virt type, and the libvirt daemons running.
#
#   deploy/prepare-host.sh [--virt-type kvm|qemu] [--authorize-key FILE] [--agent-user NAME]
#
# Idempotent. Without systemd (containers, CI) it starts virtlogd and libvirtd itself.
set -euo pipefail

VIRT_TYPE=""
AUTHORIZE_KEY=""
AGENT_USER="strato"
while [ $# -gt 0 ]; do
    case "$1" in
        --virt-type) VIRT_TYPE="$2"; shift 2 ;;
        --authorize-key) AUTHORIZE_KEY="$2"; shift 2 ;;
        --agent-user) AGENT_USER="$2"; shift 2 ;;
        *) echo "prepare-host: unknown option $1" >&2; exit 2 ;;
    esac
done

PACKAGES=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
          openssh-server)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The agent's user may use libvirt's system socket (group libvirt) and nothing else.
if ! id "$AGENT_USER" >/dev/null 2>&1; then
    useradd --system --create-home --shell /bin/bash --groups libvirt "$AGENT_USER"
fi
if [ -n "$AUTHORIZE_KEY" ]; then
    home=$(getent passwd "$AGENT_USER" | cut -d: -f6)
    install -d -m 700 -o "$AGENT_USER" -g "$AGENT_USER" "$home/.ssh"
    touch "$home/.ssh/authorized_keys"
    grep -qxF "$(cat "$AUTHORIZE_KEY")" "$home/.ssh/authorized_keys" || cat "$AUTHORIZE_KEY" >> "$home/.ssh/authorized_keys"
    chown "$AGENT_USER:" "$home/.ssh/authorized_keys"
    chmod 600 "$home/.ssh/authorized_keys"
fi

# Nested KVM guests hang on some machines: default to kvm only where it is usable, else qemu.
if [ -z "$VIRT_TYPE" ]; then
    if [ -w /dev/kvm ] && [ -z "${STRATO_NO_KVM:-}" ]; then VIRT_TYPE=kvm; else VIRT_TYPE=qemu; fi
fi
install -d /etc/strato
printf '{"virt_type": "%s"}\n' "$VIRT_TYPE" > /etc/strato/agent.json

if [ -d /run/systemd/system ]; then
    systemctl enable --now virtlogd libvirtd
else
    pgrep -x virtlogd >/dev/null || virtlogd -d
    if ! virsh -c qemu:///system version >/dev/null 2>&1; then
        pgrep -x libvirtd >/dev/null || libvirtd -d
        for _ in $(seq 1 50); do
            virsh -c qemu:///system version >/dev/null 2>&1 && break
            sleep 0.2
        done
    fi
fi
virsh -c qemu:///system version >/dev/null
echo "prepare-host: ready (virt type $VIRT_TYPE, agent user $AGENT_USER)"
