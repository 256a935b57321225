"""Boots the Debian 12 cloud image once in a throwaway libvirt domain and times it.

A transient domain ``dbtest-<hex>`` (TCG, 512 MiB, 1 vCPU, SMBIOS product ``CloudSigma``, booted
from its own virtio-blk disk: a qcow2 overlay on the image, which is left unlabelled so it stays
the caller's) is created paused; this script connects to its two serial ports (UNIX sockets QEMU
listens on), resumes it, answers cloud-init's CloudSigma context request on ttyS1 with an SSH key
and a ``#cloud-config`` whose ``runcmd`` prints a marker, and reads the console on ttyS0 until
cloud-init's last line. Prints the times (from resume) to the context request, the login prompt,
the marker and the end of cloud-init, and checks from the console that the CloudSigma datasource
was used, the hostname is the context's name and cloud-init printed the key's fingerprint for
user ``debian``. Everything it made is removed afterwards.

    python bench/debian_boot.py [--image build/guest/debian-12-cloud.qcow2] [--timeout 300] [--nic user]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import libvirt

ROOT = Path(__file__).resolve().parent.parent
MARKER = "STRATO-USERDATA-OK"

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <sysinfo type='smbios'><system><entry name='product'>CloudSigma</entry></system></sysinfo>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/><smbios mode='sysinfo'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='{image}'><seclabel model='dac' relabel='no'/></source>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
{nic}    <serial type='unix'><source mode='bind' path='{console}'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='{context}'/><target port='1'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def fingerprint(public_key: str) -> str:
    """cloud-init's default (sha256) fingerprint: hex pairs joined by colons."""
    digest = hashlib.sha256(base64.b64decode(public_key.split()[1])).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def connect(path: str, deadline: float) -> socket.socket:
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Console(threading.Thread):
    """Collects ttyS0's output, noting when each watched string first appears."""

    def __init__(self, sock: socket.socket, t0: list[float], watch: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.sock, self.t0, self.watch = sock, t0, watch
        self.text = ""
        self.seen: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while data := self.sock.recv(65536):
            self.text += data.decode("utf-8", "replace")
            for key, pattern in self.watch.items():
                if key not in self.seen and re.search(pattern, self.text, re.M):
                    self.seen[key] = time.monotonic() - self.t0[0]
            if "finished" in self.seen:
                self.done.set()


def serve_context(sock: socket.socket, t0: list[float], context: dict, times: list[float]) -> None:
    """Answers each ``<...>`` request on ttyS1 with the whole context, a newline and EOT."""
    buf = b""
    try:
        while data := sock.recv(4096):
            buf += data
            while b">" in buf:
                _request, buf = buf.split(b">", 1)
                times.append(time.monotonic() - t0[0])
                sock.sendall(json.dumps(context).encode() + b"\n\x04")
    except OSError:
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", type=Path, default=ROOT / "build/guest/debian-12-cloud.qcow2")
    p.add_argument("--uri", default="qemu:///system")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--log", type=Path, help="also write the console output here")
    p.add_argument("--nic", choices=("none", "user", "ethernet"), default="none",
                   help="a virtio NIC: user-mode (QEMU's own DHCP, as Strato's default NIC) or an unattached tap "
                        "(no DHCP answer)")
    args = p.parse_args()

    name = f"dbtest-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/var/tmp"))
    os.chmod(work, 0o755)  # QEMU runs as libvirt-qemu
    conn = libvirt.open(args.uri)
    dom = None
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(work / "key")],
                       check=True)
        public_key = (work / "key.pub").read_text().strip()
        disk = work / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(args.image.resolve()),
                        str(disk)], check=True)
        server_uuid = str(uuid.uuid4())
        context = {"uuid": server_uuid, "name": "dbtest", "global_context": {},
                   "meta": {"ssh_public_key": public_key,
                            "cloudinit-user-data": f"#cloud-config\nruncmd:\n - echo {MARKER} > /dev/ttyS0\n"}}
        nic = "" if args.nic == "none" else f"    <interface type='{args.nic}'><model type='virtio'/></interface>\n"
        xml = DOMAIN.format(name=name, uuid=server_uuid, disk=disk, image=args.image.resolve(),
                            console=work / "console.sock",
                            context=work / "context.sock", nic=nic)
        dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
        deadline = time.monotonic() + 10
        console_sock = connect(str(work / "console.sock"), deadline)
        context_sock = connect(str(work / "context.sock"), deadline)
        t0 = [time.monotonic()]
        watch = {"login": r"^dbtest login:", "marker": rf"^{MARKER}", "any_login": r" login:",
                 "finished": r"Cloud-init v\. \S+ finished at .* Datasource \S+\."}
        console = Console(console_sock, t0, watch)
        requests: list[float] = []
        threading.Thread(target=serve_context, args=(context_sock, t0, context, requests), daemon=True).start()
        console.start()
        t0[0] = time.monotonic()
        dom.resume()
        console.done.wait(args.timeout)  # cloud-init's last line, after the user data and the key table
        text = console.text
        if args.log:
            args.log.write_text(text)
        fp = fingerprint(public_key)
        checks = {
            "CloudSigma datasource": bool(re.search(r"finished at .* Datasource DataSourceCloudSigma", text)),
            "hostname dbtest (login prompt)": "login" in console.seen,
            "authorized keys for user debian": "Authorized keys from /home/debian/.ssh/authorized_keys for user debian"
                                               in text,
            "key fingerprint printed": fp in text,
            "user data ran": "marker" in console.seen,
        }

        def at(t: float | None) -> str:
            return f"{t:6.1f} s" if t is not None else "   never"

        print(f"context request   {at(requests[0] if requests else None)}  ({len(requests)} request(s))")
        print(f"login prompt      {at(console.seen.get('login', console.seen.get('any_login')))}")
        print(f"user-data marker  {at(console.seen.get('marker'))}")
        print(f"cloud-init done   {at(console.seen.get('finished'))}")
        for what, ok in checks.items():
            print(f"{'ok  ' if ok else 'FAIL'} {what}")
        return 0 if all(checks.values()) else 1
    finally:
        if dom is not None:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
        conn.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
