"""The guest channel of lab VMs that live in the lab's vCenter: guestinfo as the guest sees it.

In a lab on vcsim (lab.datacenter) every appliance is a VM of the simulator, and the emulated
tools (`lab/bin/vmtoolsd`, `vmware-rpctool`, lab.vmware_emulator) answer from what the
simulator holds for that VM's guest, through the simulator's own lab endpoints
(lab/go/vcsim/control.go, client lab.vcsim.LabControl), not through the vSphere API:

    info-get guestinfo.K    the guest's view: a guest-only variable if the simulator holds one
                            (guestinfo.ovfEnv, the OVF environment it built at power-on from the
                            VM's vApp properties when the transport is com.vmware.guestInfo,
                            password values included; never readable through the API), else the
                            VM's extraConfig value of K; an unset or "" value is "No value found"
    info-set guestinfo.K V  the guest's write: the VM's extraConfig entry K (replaced; "" removes
                            it), or, with the simulator's -guestinfo-set-private, a variable only
                            the guest sees (whether a value the guest sets appears in
                            config.extraConfig on ESXi is not known; docs/deployment.md)

So the channel needs no vCenter session: the OVF environment and the password values in it reach
the guest the way vCenter hands them to a VM, while every API read shows them as vCenter does.

Who calls the endpoints: the lab, as the VMX does on a real host. `ChannelServer` is a thread of
the lab process that holds the simulator's control client and listens on a Unix socket in the
simulator's private working directory (0700, removed with it). A tool run sends one RPC there and
prints the answer. So the tools need neither pyVmomi nor the control token, and no credential is
ever in a guest's environment, a file of the guest, or argv. The guest's VM file
(FIRSTTRUST_VMWARE_EMULATOR) is a channel file naming the socket and the VM:

    {"vsphere": {"socket": "/tmp/firsttrust-vcsim-.../guest-channel.sock", "vm": "vm-42"}}

Wire format, one request per connection: the tool sends one JSON line {"vm": ID, "command": RPC};
the server answers one JSON line {"ok": bool, "reply": str}, or {"error": str} when the lab's
endpoint failed (the tool then fails as a broken emulator, exit 70, never as a VMX answer).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

SOCKET_NAME = "guest-channel.sock"
GUESTINFO_PREFIX = "guestinfo."
# agent.sources.deploy.OVFENV_GUESTINFO_KEY, not imported: the tools import this module and
# must start quickly (tests/unit/test_vsphere_channel.py checks the two are equal).
OVFENV_GUESTINFO_KEY = "guestinfo.ovfEnv"
# One request: a 64 KiB RPC (the VMX's GUESTMSG_MAX_IN_SIZE) JSON-escaped, with room to spare.
# One reply: a guestinfo value; the agent's client takes at most 1 MiB.
MAX_REQUEST_BYTES = 512 * 1024
MAX_REPLY_BYTES = 2 * 1024 * 1024
# A tool run is bounded by the agent's own timeout (it kills a stalled tool after 5 s); this
# bounds the tool's wait on its own, and the server's wait on a client that sends nothing.
CHANNEL_TIMEOUT = 20.0


class ChannelError(Exception):
    """The channel is unusable (no server, a bad channel file, the API failed). One line, no secret."""


# --- the tools' side (stdlib only) -----------------------------------------------------------------


def write_channel_file(path: Path, *, socket_path: Path, vm: str) -> None:
    """The guest's VM file for a VM of the data center (no secret in it)."""
    path.write_text(json.dumps({"vsphere": {"socket": str(socket_path), "vm": vm}}))


def is_channel(document: object) -> bool:
    return isinstance(document, dict) and "vsphere" in document


def request(document: Mapping, command: str, timeout: float = CHANNEL_TIMEOUT) -> tuple[bool, str]:
    """Send one RPC for the VM of a channel file; return the VMX's answer (ok, reply).

    Raises:
        ChannelError: a bad channel file, no server listening, or the server's API call failed.
    """
    channel = document.get("vsphere")
    if not isinstance(channel, dict) or not all(isinstance(channel.get(k), str) and channel[k]
                                                for k in ("socket", "vm")):
        raise ChannelError("a vSphere channel file needs a socket and a vm")
    payload = json.dumps({"vm": channel["vm"], "command": command}).encode("utf-8", "surrogateescape") + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            _connect(sock, channel["socket"], timeout)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = _read_line(sock, MAX_REPLY_BYTES)
    except OSError as exc:
        raise ChannelError(f"the lab's guest channel at {channel['socket']} does not answer "
                           f"({exc.strerror or type(exc).__name__}); is the lab's data center running?") from None
    try:
        reply = json.loads(answer)
    except (ValueError, RecursionError):
        raise ChannelError("the lab's guest channel sent a malformed answer") from None
    if isinstance(reply, dict) and isinstance(reply.get("error"), str):
        raise ChannelError(reply["error"])
    if not (isinstance(reply, dict) and isinstance(reply.get("ok"), bool) and isinstance(reply.get("reply"), str)):
        raise ChannelError("the lab's guest channel sent a malformed answer")
    return reply["ok"], reply["reply"]


def _connect(sock: socket.socket, path: str, timeout: float) -> None:
    """connect(), tried again while the server's accept queue is full: a Unix socket with a
    timeout fails at once then (EAGAIN) instead of waiting, and a VMX never refuses its guest."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _read_line(sock: socket.socket, limit: int) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise OSError(0, "message too large")
    return data


# --- the host's side (in the lab process) ----------------------------------------------------------


class ApiGuestinfo:
    """One VM's guestinfo as its guest sees it, through the simulator's lab endpoints
    (lab.vcsim.LabControl: guestinfo_get / guestinfo_set).

    `get` and item assignment are all lab.vmware_emulator's RPC interpreter needs.
    """

    def __init__(self, lab, vm_moid: str) -> None:
        self.lab, self.vm_moid = lab, vm_moid

    def get(self, key: str) -> str | None:
        if not key.startswith(GUESTINFO_PREFIX):
            return None  # a guest reads guestinfo.*, never the VM's other settings
        return self.lab.guestinfo_get(self.vm_moid, key) or None

    def __setitem__(self, key: str, value: str) -> None:
        self.lab.guestinfo_set(self.vm_moid, key, value)


class ChannelServer:
    """The lab's VMX for every VM of one simulator: answers the tools' RPCs on a Unix socket.

        server = ChannelServer(vcsim.lab, workdir / SOCKET_NAME, rpc)   # rpc: the emulator's interpreter
        server.start(); ...; server.stop()

    RPCs for one VM are answered one at a time, as a VMX serializes its guest's; different VMs
    in parallel.
    """

    def __init__(self, lab, path: Path, rpc: Callable[[object, str], tuple[bool, str]]) -> None:
        self.lab, self.path, self.rpc = lab, path, rpc
        self._vm_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        from .lineserver import LineServer  # not at the top: the tools import this module and start quickly

        self._server = LineServer(path, self.answer, name="lab-guest-channel", timeout=CHANNEL_TIMEOUT,
                                  max_request=MAX_REQUEST_BYTES)

    def start(self) -> "ChannelServer":
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop answering (idempotent); a tool run after this fails with a ChannelError."""
        self._server.stop()

    def answer(self, line: bytes) -> dict:
        from firsttrust.errors import FirsttrustError

        try:
            message = json.loads(line.decode("utf-8", "surrogateescape")) if len(line) <= MAX_REQUEST_BYTES else None
        except (ValueError, RecursionError):
            message = None
        if not (isinstance(message, dict) and isinstance(message.get("vm"), str)
                and isinstance(message.get("command"), str)):
            return {"error": "malformed request to the lab's guest channel"}
        moid = message["vm"]
        with self._locks_lock:
            lock = self._vm_locks.setdefault(moid, threading.Lock())
        with lock:
            try:
                ok, reply = self.rpc(ApiGuestinfo(self.lab, moid), message["command"])
            except FirsttrustError as exc:  # lab.vcsim's LabControlError: one line, no secret
                return {"error": f"the lab's vCenter: {exc}"}
        return {"ok": ok, "reply": reply}
