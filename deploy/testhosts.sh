#!/bin/sh
# Try a multi-host Strato cloud on one machine: N hypervisor hosts, each in its own network and
# mount namespace with its own libvirtd, virtlogd and sshd (tests/hosts/harness.py), on a bridge
# with a free 10.x.y.0/24.  As root, from a checkout set up by scripts/setup.sh:
#
#   deploy/testhosts.sh up --hosts 2     # prints the hosts as JSON, with each one's agent command
#   strato hosts add NAME --ssh root@ADDRESS:22 --key CLIENT_KEY --known-hosts KNOWN_HOSTS \
#       --agent-command "AGENT_COMMAND"  # for each host, then `strato serve` (STRATO_LOCAL_HOST=false)
#   deploy/testhosts.sh down DIR         # kill everything, remove the namespaces, bridge and DIR
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
exec env PYTHONPATH="$PWD" "$PYTHON" -m tests.hosts.harness "$@"
