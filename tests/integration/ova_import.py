"""Import an OVA through the vSphere API as vCenter's deploy wizard and `govc import.ova` do:
OvfManager.CreateImportSpec (descriptor + property mapping), ResourcePool.ImportVApp, then each
disk uploaded to the HttpNfcLease's device URL and the lease completed.

For the tests (tests/integration/test_ova_import.py, tests/vm): `firsttrust deploy --ova` does
not exist yet (issue 12), so this is not the requester's code.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class OvaContents:
    members: list[str]  # in tar order
    descriptor: str
    manifest: dict[str, str]  # file name -> SHA256 (hex)
    digests: dict[str, str]  # file name -> SHA256 of the member as read


def read_ova(path: Path) -> OvaContents:
    """The members in order, the descriptor, the manifest, and the real digest of each member."""
    with tarfile.open(path) as tar:
        members = [m.name for m in tar.getmembers()]
        digests, texts = {}, {}
        for member in tar.getmembers():
            digest = hashlib.sha256()
            data = bytearray()
            with tar.extractfile(member) as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
                    if member.name.endswith((".ovf", ".mf")):
                        data += chunk
            digests[member.name] = digest.hexdigest()
            if data:
                texts[member.name] = data.decode("utf-8")
    descriptor = next(text for name, text in texts.items() if name.endswith(".ovf"))
    manifest_text = next(text for name, text in texts.items() if name.endswith(".mf"))
    manifest = {}
    for line in manifest_text.splitlines():
        name, _, digest = line.partition(")= ")
        assert name.startswith("SHA256("), line
        manifest[name[len("SHA256("):]] = digest
    return OvaContents(members, descriptor, manifest, digests)


def import_ova(vc, ova: Path, name: str, properties: dict[str, str], context: ssl.SSLContext,
               host: str, timeout: float = 120):
    """Import `ova` as VM `name` with `properties` as the PropertyMapping.

    Returns:
        (the VM, CreateImportSpec's result, {uploaded file name: bytes sent}).

    `vc` is a requester.vsphere.Vcenter; `context` and `host` ("address:port") are used for the
    uploads (the lease's device URLs name the host "*", meaning the one the API was reached at).
    """
    vim = vc.vim
    contents = read_ova(ova)
    datacenter = vc.content.rootFolder.childEntity[0]
    compute = datacenter.hostFolder.childEntity[0]
    pool = compute.resourcePool
    datastore = datacenter.datastore[0]
    params = vim.OvfManager.CreateImportSpecParams(
        entityName=name, propertyMapping=[vim.KeyValue(key=k, value=v) for k, v in properties.items()])
    result = vc.content.ovfManager.CreateImportSpec(contents.descriptor, pool, datastore, params)
    if result.error:
        raise AssertionError(f"CreateImportSpec: {[e.localizedMessage or type(e).__name__ for e in result.error]}")
    lease = pool.ImportVApp(result.importSpec, datacenter.vmFolder)
    deadline = time.monotonic() + timeout
    while lease.state == vim.HttpNfcLease.State.initializing:
        if time.monotonic() > deadline:
            raise AssertionError("the lease did not become ready")
        time.sleep(0.2)
    if lease.state != vim.HttpNfcLease.State.ready:
        raise AssertionError(f"lease {lease.state}: {lease.error}")
    entity = lease.info.entity  # the lease object is gone once completed
    files = {item.deviceId: item for item in result.fileItem}
    uploaded: dict[str, int] = {}
    with tarfile.open(ova) as tar:
        for device in lease.info.deviceUrl:
            item = files.get(device.importKey)
            if item is None:
                continue
            url = urlsplit(device.url.replace("*", host, 1))
            member = tar.getmember(item.path)
            connection = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=60)
            with tar.extractfile(member) as body:
                connection.request("PUT" if item.create else "POST", url.path, body=body,
                                   headers={"Content-Length": str(member.size),
                                            "Content-Type": "application/x-vnd.vmware-streamVmdk"})
                response = connection.getresponse()
                response.read()
            connection.close()
            if response.status != 200:
                lease.HttpNfcLeaseAbort()
                raise AssertionError(f"upload of {item.path}: HTTP {response.status}")
            uploaded[item.path] = member.size
    lease.HttpNfcLeaseComplete()
    return entity, result, uploaded
