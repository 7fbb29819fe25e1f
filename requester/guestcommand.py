"""The guest-command way in, through the vSphere API's guest operations (issue 27).

    report = trust_by_guest_command(vc, vm, "app-01", "10.0.0.5", guest=GuestLogin(user, password),
                                    store=store)

What it does, each step through vCenter with the guest account's credentials (NamePassword-
Authentication; they go to vCenter only, never argv or a log):

1. VMware Tools must be running and ready for guest operations (guest.toolsRunningStatus and
   guest.guestOperationsReady, waited for through the session's one PropertyCollector), else one
   line and nothing done. The first guest call is tried again while it meets
   GuestOperationsUnavailable (until the Tools timeout) or InvalidGuestLogin (30 s at most: the
   guest account gets its password from provisioning, which may still run).
2. CreateTemporaryDirectoryInGuest; the requester's certificate uploaded into it
   (InitiateFileTransferToGuest, an HTTPS PUT).
3. StartProgramInGuest: `firsttrust-agent authorize --cert DIR/requester.pem --expect-pin PIN
   --report DIR/report.json` (the pin on the command line: a certificate swapped in the guest is
   refused); ListProcessesInGuest until it ended, then its exit code checked.
4. The report fetched (InitiateFileTransferFromGuest, an HTTPS GET): the outcome, the error line
   of a failed run, the appliance's certificate.
5. The first pinned call (GET /v1/identity over mutual TLS, the appliance's certificate pinned)
   proves it is the identity the appliance serves; only then the trust store records the pin.
6. The temporary directory is removed (also when a step failed).

Every transfer URL's "*" is replaced with the vCenter server the call was made to (the
reference: "The client replaces the asterisk with the server name on which it invoked the
call"), and the HTTPS connection is accepted only if the peer's certificate is exactly the one in
HostSystem.config.certificate of the VM's host, read over the verified vCenter session; anything
else fails in one line before a byte is sent.

The injected-certificate way uses the same transfers: `read_appliance_certificate` fetches the
certificate the agent wrote by guest file transfer when guest credentials are given, else reads
it back from guestinfo, and says which channel gave it; `verify_and_pin` then pins it after the
first pinned call.

Errors are GuestCommandError with a stable code (docs/requester.md). A failure before step 3
leaves nothing authorized; a failure after it leaves the requester authorized but nothing pinned,
and the same call re-run finishes the job (`authorize` is idempotent).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import shlex
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from firsttrust.deployment import DEFAULT_API_PORT
from firsttrust.errors import FirsttrustError
from firsttrust.identity import certificate_pem, load_certificate, pin_of_certificate

from .identitycheck import refuse_other_pin, save_pin
from .session import PinnedSession
from .truststore import ApplianceRecord, TrustStore

AGENT_PROGRAM = "/usr/bin/firsttrust-agent"
EMBODIMENT = "guest-command"
# authorize takes well under a second; a loaded appliance at first boot may take several.
PROGRAM_TIMEOUT = 60.0
# Its exit is polled with ListProcessesInGuest, each poll a logon in the guest (PAM, an auth-log
# line on a real appliance): first after PROGRAM_POLL, each pause twice the last, at most
# PROGRAM_POLL_MAX. About 35 polls over PROGRAM_TIMEOUT, against 300 at a fixed 0.2 s.
PROGRAM_POLL = 0.2
PROGRAM_POLL_MAX = 2.0
# VMware Tools starts early in an appliance's boot; the deployer passes its IP timeout.
TOOLS_TIMEOUT = 60.0
# The first guest operation is tried again while the guest starts (_first_call).
RETRY_PAUSE = 2.0
GUEST_LOGIN_GRACE = 30.0
TRANSFER_TIMEOUT = 30.0
MAX_REPORT_BYTES = 256 * 1024


class GuestCommandError(FirsttrustError):
    """The guest-command way failed; one line, never a credential."""

    code = "guest_command"
    transient = False  # True: the guest may still be starting (_first_call tries again)


class GuestToolsNotRunning(GuestCommandError):
    code = "guest_tools_not_running"


class GuestOperationsUnavailable(GuestCommandError):
    code = "guest_ops_unavailable"


class GuestLoginRefused(GuestCommandError):
    code = "guest_login_refused"


class GuestProgramFailed(GuestCommandError):
    code = "guest_program_failed"


class GuestTransferRefused(GuestCommandError):
    code = "guest_transfer_refused"


class GuestIdentityMismatch(GuestCommandError):
    code = "guest_identity_mismatch"


@dataclass(frozen=True)
class GuestLogin:
    user: str
    password: str = field(repr=False)


@dataclass
class GuestCommandReport:
    name: str
    pin: str
    record: ApplianceRecord
    channel: str = "guest file transfer"


def trust_by_guest_command(vc, vm, name: str, address: str, *, guest: GuestLogin, store: TrustStore | None = None,
                           api_port: int = DEFAULT_API_PORT, program_timeout: float = PROGRAM_TIMEOUT,
                           tools_timeout: float = TOOLS_TIMEOUT, replace: bool = True) -> GuestCommandReport:
    """Authorize the requester in the VM's guest and pin the appliance (see the module docstring).
    `replace` as verify_and_pin's.

    Raises:
        GuestCommandError (a subclass per cause): nothing was pinned.
        IdentityChanged: `name` is pinned to another key and `replace` is false; nothing pinned.
    """
    store = store or TrustStore()
    requester_pem = store.identity().cert_pem  # created if missing; read bounded
    requester_pin = pin_of_certificate(requester_pem)
    from .vsphere import VsphereError

    deadline = time.monotonic() + tools_timeout
    _wait_for_guest_operations(vc, vm, name, tools_timeout)
    vim = vc.vim
    manager = vc.content.guestOperationsManager
    if manager is None:
        raise GuestOperationsUnavailable(f"{name}: this vCenter offers no guest operations")
    auth = vim.vm.guest.NamePasswordAuthentication(username=guest.user, password=guest.password)
    transfers = _Transfers(vc, vm, name)
    files, processes = manager.fileManager, manager.processManager
    directory = _first_call(vc, name, "creating a temporary directory in the guest",
                            lambda: files.CreateTemporaryDirectoryInGuest(vm, auth, "firsttrust-", ""), deadline)
    try:
        cert_path, report_path = f"{directory}/requester.pem", f"{directory}/report.json"
        url = _call(vc, name, "starting the upload of the requester's certificate",
                    lambda: files.InitiateFileTransferToGuest(vm, auth, cert_path, vim.vm.guest.FileManager.FileAttributes(),
                                                              len(requester_pem), True))
        transfers.put(url, requester_pem)
        arguments = shlex.join(["authorize", "--cert", cert_path, "--expect-pin", requester_pin,
                                "--name", "requester", "--report", report_path])
        spec = vim.vm.guest.ProcessManager.ProgramSpec(programPath=AGENT_PROGRAM, arguments=arguments)
        pid = _call(vc, name, "starting firsttrust-agent authorize in the guest",
                    lambda: processes.StartProgramInGuest(vm, auth, spec))
        exit_code = _wait_exit(vc, name, processes, vm, auth, pid, program_timeout)
        report = _read_report(vc, name, files, vm, auth, report_path, transfers)
        if exit_code != 0 or not report.get("ok"):
            error = str(report.get("error") or "no error line").splitlines()[-1][:300] if report else "no report"
            raise GuestProgramFailed(f"{name}: firsttrust-agent authorize exited {exit_code} in the guest: {error}")
        if report.get("pin") != requester_pin:
            raise GuestProgramFailed(f"{name}: the guest authorized another certificate than the requester's")
        try:
            appliance_pem = certificate_pem(str(report.get("appliance_certificate") or "").encode("ascii"))
        except (FirsttrustError, UnicodeEncodeError):
            raise GuestProgramFailed(f"{name}: the guest's report holds no valid appliance certificate") from None
    finally:
        try:
            files.DeleteDirectoryInGuest(vm, auth, directory, True)
        except Exception:  # best effort: a failure above is what the caller needs to see
            pass
    host, port_number = _split_address(address, api_port)
    refuse_other_pin(store, name, pin_of_certificate(appliance_pem), replace=replace, how=_how(name))
    asyncio.run(_first_pinned_call(name, host, port_number, appliance_pem, store))
    pin = pin_of_certificate(appliance_pem)
    record = ApplianceRecord(name=name, address=host, pin=pin, certificate=appliance_pem.decode("ascii"),
                             api_port=port_number, embodiment=EMBODIMENT, enrolled_at=time.time())
    save_pin(store, record, replace=replace, how=_how(name))
    return GuestCommandReport(name=name, pin=pin, record=record)


# Where the agent writes its certificate on an appliance (agent.config's public_certificate).
APPLIANCE_CERT_PATH = "/etc/firsttrust/appliance.crt"
FILE_TRANSFER, GUESTINFO_READ_BACK = "guest file transfer", "guestinfo read-back (config.extraConfig)"


def read_appliance_certificate(vc, vm, name: str, *, guest: GuestLogin | None = None,
                               guest_path: str = APPLIANCE_CERT_PATH,
                               tools_timeout: float = TOOLS_TIMEOUT) -> tuple[bytes, str]:
    """The appliance's certificate for the injected-certificate way, and the channel it came by.

    With guest credentials: the file the agent wrote (`guest_path`), fetched by guest file
    transfer (InitiateFileTransferFromGuest, the HTTPS GET verified against the VM's host's
    HostSystem.config.certificate): the vSphere API's documented way to read a file of a guest.
    Without: the guestinfo read-back, `guestinfo.firsttrust.appliance-cert` in the VM's
    config.extraConfig, where the agent publishes it (whether a value the guest sets appears there
    on ESXi is not shown; docs/deployment.md). The caller pins it only after its first pinned call.

    Raises:
        GuestCommandError (a subclass per cause): the certificate could not be read.
    """
    from firsttrust.deployment import APPLIANCE_CERT_GUESTINFO

    from .deployplan import current_values

    if guest is None:
        from .vsphere import VsphereError

        try:
            published = current_values(vc.extra_config(vm)).get(APPLIANCE_CERT_GUESTINFO)
        except VsphereError as exc:
            raise GuestCommandError(f"{name}: reading {APPLIANCE_CERT_GUESTINFO}: {exc}") from None
        if not published:
            raise GuestTransferRefused(f"{name}: the VM's configuration shows no {APPLIANCE_CERT_GUESTINFO}; "
                                       "give guest credentials to fetch the certificate by guest file transfer")
        import base64
        import binascii

        try:
            return certificate_pem(base64.b64decode(published, validate=True)), GUESTINFO_READ_BACK
        except (binascii.Error, ValueError, FirsttrustError):
            raise GuestTransferRefused(f"{name}: {APPLIANCE_CERT_GUESTINFO} is not a base64 certificate") from None
    deadline = time.monotonic() + tools_timeout
    _wait_for_guest_operations(vc, vm, name, tools_timeout)
    manager = vc.content.guestOperationsManager
    if manager is None:
        raise GuestOperationsUnavailable(f"{name}: this vCenter offers no guest operations")
    auth = vc.vim.vm.guest.NamePasswordAuthentication(username=guest.user, password=guest.password)
    transfers = _Transfers(vc, vm, name)
    info = _first_call(vc, name, f"fetching {guest_path} from the guest",
                       lambda: manager.fileManager.InitiateFileTransferFromGuest(vm, auth, guest_path), deadline)
    if info.size > MAX_REPORT_BYTES:
        raise GuestTransferRefused(f"{name}: {guest_path} is larger than {MAX_REPORT_BYTES} bytes")
    try:
        return certificate_pem(transfers.get(info.url)), FILE_TRANSFER
    except (FirsttrustError, ValueError) as exc:
        if isinstance(exc, GuestCommandError):
            raise
        raise GuestTransferRefused(f"{name}: {guest_path} in the guest is not a certificate") from None


def verify_and_pin(name: str, address: str, certificate: bytes, *, embodiment: str, store: TrustStore | None = None,
                   api_port: int = DEFAULT_API_PORT, replace: bool = True) -> ApplianceRecord:
    """The first pinned call with `certificate` (GET /v1/identity over mutual TLS): only an
    appliance that serves it, and accepts the requester, gets pinned. `replace` false: a name
    pinned to another key is refused (pin-cert without --replace); deploy, whose VM carries this
    deployment's id, passes true.

    Raises:
        GuestIdentityMismatch: the call failed or the appliance serves another identity; nothing pinned.
        IdentityChanged: `name` is pinned to another key and `replace` is false; nothing sent or pinned.
    """
    store = store or TrustStore()
    store.identity()
    host, port = _split_address(address, api_port)
    pem = certificate_pem(certificate)
    refuse_other_pin(store, name, pin_of_certificate(pem), replace=replace, how=_how(name))
    asyncio.run(_first_pinned_call(name, host, port, pem, store))
    record = ApplianceRecord(name=name, address=host, pin=pin_of_certificate(pem), certificate=pem.decode("ascii"),
                             api_port=port, embodiment=embodiment, enrolled_at=time.time())
    save_pin(store, record, replace=replace, how=_how(name))
    return record


def _how(name: str) -> str:
    return f"firsttrust pin-cert {name} --vcenter ... --replace"


def _split_address(address: str, api_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":") if address.count(":") == 1 else (address, "", "")
    return (host or address), (int(port) if port else api_port)


async def _first_pinned_call(name: str, host: str, port: int, pem: bytes, store: TrustStore) -> None:
    try:
        async with PinnedSession(host, port, pem, store.key_path, store.cert_path) as api:
            answer = await api.get("/v1/identity")
    except FirsttrustError as exc:
        raise GuestIdentityMismatch(f"{name}: the first pinned call to the appliance failed: {exc}") from None
    if not isinstance(answer, dict) or answer.get("pin") != pin_of_certificate(pem):
        raise GuestIdentityMismatch(f"{name}: the appliance serves another identity than the guest reported")


def _read(obj, path: str):
    value = obj
    for part in path.split("."):
        value = getattr(value, part, None)
    return value


def _wait_for_guest_operations(vc, vm, name: str, timeout: float) -> None:
    """Until VMware Tools runs in the VM and its guest operations are ready (vsphere_wait), the
    run's one PropertyCollector.

    Raises:
        GuestToolsNotRunning: not within `timeout`. GuestCommandError: the wait failed.
    """
    from .vsphere import VsphereError

    try:
        vc.wait_for_tools(vm, timeout)
    except VsphereError as exc:
        if exc.code != "tools_not_running":
            raise GuestCommandError(f"{name}: waiting for VMware Tools: {exc}") from None
        raise GuestToolsNotRunning(f"{name}: VMware Tools is not running in the VM after {timeout:g} s; "
                                   "guest operations need it") from None


def _first_call(vc, name: str, what: str, call, deadline: float):
    """The first guest operation, tried again every RETRY_PAUSE while the guest may still be
    starting: GuestOperationsUnavailable until `deadline` (Tools' guest operations can lag its
    readiness flag), InvalidGuestLogin for GUEST_LOGIN_GRACE at most (the guest account gets its
    password from provisioning, which may still run when Tools already answers). Nothing exists
    in the guest before this call succeeds, so trying it again is safe."""
    login_until = min(deadline, time.monotonic() + GUEST_LOGIN_GRACE)
    while True:
        try:
            return _call(vc, name, what, call)
        except (GuestOperationsUnavailable, GuestLoginRefused) as exc:
            until = login_until if isinstance(exc, GuestLoginRefused) else deadline
            if not getattr(exc, "transient", False) or time.monotonic() + RETRY_PAUSE > until:
                raise
        time.sleep(RETRY_PAUSE)


def _transient(error: GuestCommandError) -> GuestCommandError:
    error.transient = True
    return error


def _call(vc, name: str, what: str, call):
    vim = vc.vim
    try:
        return call()
    except vim.fault.InvalidGuestLogin:
        raise _transient(GuestLoginRefused(f"{name}: {what}: the guest refused the guest account's credentials "
                                           "(wrong, locked, or the enrollment window closed)")) from None
    except vim.fault.GuestOperationsUnavailable:
        raise _transient(GuestOperationsUnavailable(f"{name}: {what}: guest operations are unavailable "
                                                    "(VMware Tools not running, or guest operations disabled)")) from None
    except vim.fault.GuestPermissionDenied:
        raise GuestLoginRefused(f"{name}: {what}: the guest account may not do this") from None
    except vim.fault.FileNotFound:
        raise GuestTransferRefused(f"{name}: {what}: no such file in the guest") from None
    except vc.vmodl.fault.MethodNotFound:
        raise GuestOperationsUnavailable(f"{name}: {what}: this vCenter does not implement guest operations") from None
    except vim.fault.NoPermission as exc:
        raise GuestOperationsUnavailable(f"{name}: {what}: the vCenter user lacks the privilege "
                                         f"{getattr(exc, 'privilegeId', '') or 'VirtualMachine.GuestOperations.*'}") from None
    except vc.vmodl.MethodFault as exc:
        raise GuestCommandError(f"{name}: {what}: {type(exc).__name__}") from None
    except (OSError, http.client.HTTPException) as exc:  # vCenter unreachable mid-call, or its answer cut
        raise GuestCommandError(f"{name}: {what}: the connection to vCenter failed "
                                f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None


def _wait_exit(vc, name, processes, vm, auth, pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    pause = PROGRAM_POLL
    while True:
        infos = _call(vc, name, "reading the program's exit code", lambda: processes.ListProcessesInGuest(vm, auth, [pid]))
        if infos and infos[0].endTime is not None:
            return int(infos[0].exitCode if infos[0].exitCode is not None else -1)
        left = deadline - time.monotonic()
        if left <= 0:
            raise GuestProgramFailed(f"{name}: firsttrust-agent authorize did not finish within {timeout:g} s in the guest")
        time.sleep(min(pause, left))
        pause = min(pause * 2, PROGRAM_POLL_MAX)


def _read_report(vc, name, files, vm, auth, path: str, transfers: "_Transfers") -> dict:
    info = _call(vc, name, "fetching the program's report", lambda: files.InitiateFileTransferFromGuest(vm, auth, path))
    if info.size > MAX_REPORT_BYTES:
        raise GuestTransferRefused(f"{name}: the guest's report is larger than {MAX_REPORT_BYTES} bytes")
    data = transfers.get(info.url)
    try:
        report = json.loads(data)
    except (ValueError, RecursionError):
        raise GuestProgramFailed(f"{name}: the guest's report is not JSON") from None
    return report if isinstance(report, dict) else {}


class _Transfers:
    """HTTPS to the VM's host, the peer's certificate exactly HostSystem.config.certificate."""

    def __init__(self, vc, vm, name: str) -> None:
        self.name = name
        self.server = urlsplit(f"//{vc.netloc}").hostname if getattr(vc, "netloc", "") else None
        host = _call(vc, name, "reading the VM's host", lambda: _read(vm, "runtime.host"))
        raw = _call(vc, name, "reading the host's certificate (Host.Config read access)",
                    lambda: _read(host, "config.certificate")) if host is not None else None
        try:
            pem = bytes(b & 0xFF for b in raw) if raw else b""
            self.host_der = load_certificate(pem).public_bytes(_der()) if pem else None
        except (FirsttrustError, ValueError):
            self.host_der = None

    def _connect(self, url: str) -> tuple[http.client.HTTPSConnection, str]:
        if self.host_der is None:
            raise GuestTransferRefused(f"{self.name}: the VM's host has no certificate in config.certificate; "
                                       "a transfer cannot be verified")
        parts = urlsplit(url)
        host = parts.hostname
        if host == "*":
            host = self.server
        if parts.scheme != "https" or not host:
            raise GuestTransferRefused(f"{self.name}: the transfer URL is not HTTPS to a known host")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the exact certificate is compared below, before any byte is sent
        connection = http.client.HTTPSConnection(host, parts.port or 443, context=context, timeout=TRANSFER_TIMEOUT)
        try:
            connection.connect()
        except OSError as exc:
            raise GuestTransferRefused(f"{self.name}: cannot reach the host for the transfer: "
                                       f"{exc.strerror or type(exc).__name__}") from None
        peer = connection.sock.getpeercert(binary_form=True)
        if peer is None or hashlib.sha256(peer).digest() != hashlib.sha256(self.host_der).digest():
            connection.close()
            raise GuestTransferRefused(f"{self.name}: the transfer's server is not the VM's host "
                                       "(its certificate is not HostSystem.config.certificate)")
        return connection, parts.path + (f"?{parts.query}" if parts.query else "")

    def put(self, url: str, data: bytes) -> None:
        connection, target = self._connect(url)
        try:
            connection.request("PUT", target, body=data, headers={"Content-Type": "application/octet-stream"})
            response = connection.getresponse()
            response.read(4096)
        except OSError as exc:
            raise GuestTransferRefused(f"{self.name}: the upload failed: {exc.strerror or type(exc).__name__}") from None
        finally:
            connection.close()
        if response.status != 200:
            raise GuestTransferRefused(f"{self.name}: the host refused the upload (HTTP {response.status})")

    def get(self, url: str) -> bytes:
        connection, target = self._connect(url)
        try:
            connection.request("GET", target)
            response = connection.getresponse()
            data = response.read(MAX_REPORT_BYTES + 1)
        except OSError as exc:
            raise GuestTransferRefused(f"{self.name}: the download failed: {exc.strerror or type(exc).__name__}") from None
        finally:
            connection.close()
        if response.status != 200 or len(data) > MAX_REPORT_BYTES:
            raise GuestTransferRefused(f"{self.name}: the host refused the download (HTTP {response.status})")
        return data


def _der():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER
