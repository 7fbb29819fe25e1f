"""Reading an OVA's members and digests, and importing one through the requester's own code
(requester/vsphere.py, Vcenter.import_ova: what `firsttrust deploy --ova` does) for the tests
(tests/integration/test_ova_import.py, tests/vm/test_ova.py).
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

from firsttrust.requester.ovafile import check_ova


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


def import_ova(vc, ova: Path, name: str, properties: dict[str, str]):
    """Import `ova` as VM `name` with `properties` as the PropertyMapping, where `firsttrust
    deploy --ova` would by default (placement.choose_placement). `vc` is a requester.vsphere.Vcenter.

    Returns:
        (the VM, {uploaded file name: bytes sent}).
    """
    uploaded: dict[str, int] = {}
    from firsttrust.requester.placement import PlacementRequest

    placement = vc.placement(PlacementRequest())
    ova_file = check_ova(str(ova))
    spec = vc.import_spec(ova_file, name, properties.items(), (), placement, ova_file.facts().networks)
    vm = vc.import_ova(ova_file, name, spec, placement, on_upload=uploaded.__setitem__)
    return vm, uploaded
