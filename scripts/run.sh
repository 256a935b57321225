#!/usr/bin/env bash
# Sets this machine up (idempotent) and runs a one-machine Strato cloud on it.
#   STRATO_LISTEN (127.0.0.1:8080), STRATO_DATA_DIR (/var/lib/strato: QEMU's user must be able to
#   traverse it, which a checkout under /root is not),
#   STRATO_ADMIN_EMAIL / STRATO_ADMIN_PASSWORD: the first user, created when missing.
#   STRATO_TLS_LISTEN (127.0.0.1:8443): HTTPS (self-signed certificate in $STRATO_DATA_DIR/tls/ unless
#   STRATO_TLS_CERT / STRATO_TLS_KEY name one); the test guest and Debian 12 images are in the drive library.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
DATA_DIR=${STRATO_DATA_DIR:-/var/lib/strato}
EMAIL=${STRATO_ADMIN_EMAIL:-admin@example.com}
if [ ! -f "$DATA_DIR/.admin-created" ]; then
    PASSWORD=${STRATO_ADMIN_PASSWORD:-$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(12))')}
    .venv/bin/strato users create "$EMAIL" --password "$PASSWORD" --data-dir "$DATA_DIR" >/dev/null 2>&1 || true
    mkdir -p "$DATA_DIR" && touch "$DATA_DIR/.admin-created"
    echo "strato: user $EMAIL, password $PASSWORD"
fi
# The test guest and the Debian cloud image as library drives (no-ops when they are there already);
# prints their uuids.
echo "strato: library drive $(.venv/bin/strato libdrives import build/guest/strato-guest.img --name 'Strato test guest' \
    --os linux --arch 64 --media disk --distribution Strato --description 'Busybox test guest' --data-dir "$DATA_DIR" \
    2>/dev/null)"
echo "strato: library drive $(.venv/bin/strato libdrives import build/guest/debian-12-cloud.qcow2 \
    --name 'Debian 12 (cloud)' --os linux --arch 64 --media disk --distribution Debian --version 12 \
    --description 'Debian 12 (bookworm) with cloud-init: SSH key, hostname and user data from the server context; user debian' \
    --url https://www.debian.org/ --data-dir "$DATA_DIR" 2>/dev/null)"
exec .venv/bin/strato serve --data-dir "$DATA_DIR" --listen "${STRATO_LISTEN:-127.0.0.1:8080}" \
    --tls-listen "${STRATO_TLS_LISTEN:-127.0.0.1:8443}"
