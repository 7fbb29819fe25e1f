#!/bin/bash
# Package a bootable raw disk as an OVA: the disk as a streamOptimized VMDK, the OVF descriptor
# (packaging/ova/descriptor.py), a SHA256 manifest, in a tar with the descriptor first. The last
# step of packaging/ova/build.sh, on its own so that tests can package a small disk the same way.
#
#   packaging/ova/package.sh --disk DISK.raw --out FILE.ova [--name NAME] [--version V] [--python PY]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/packaging/ova
DISK=
OUT_OVA=
NAME=firsttrust-appliance
VERSION=0
PYTHON_=$REPO/.venv/bin/python

die() { echo "packaging/ova/package.sh: error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
	case "$1" in
	--disk) DISK=$2; shift 2 ;;
	--out) OUT_OVA=$2; shift 2 ;;
	--name) NAME=$2; shift 2 ;;
	--version) VERSION=$2; shift 2 ;;
	--python) PYTHON_=$2; shift 2 ;;
	-h|--help) sed -n '2,/^set -euo/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
[ -f "$DISK" ] || die "no disk at '${DISK}' (--disk DISK.raw)"
[ -n "$OUT_OVA" ] || die "--out FILE.ova is required"
command -v qemu-img >/dev/null || die "qemu-img is missing (Debian: qemu-utils)"

pkg=$(mktemp -d "$(dirname "$OUT_OVA")/.package.XXXXXX")
trap 'rm -rf "$pkg"' EXIT
vmdk=$NAME-disk1.vmdk
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$DISK" "$pkg/$vmdk"
"$PYTHON_" "$HERE/descriptor.py" --vmdk "$pkg/$vmdk" --capacity "$(stat -c %s "$DISK")" --name "$NAME" \
	--version "$VERSION" --out "$pkg/$NAME.ovf"
# DSP0243 clause 5.1: one "SHA256(file)= digest" line per file of the package.
(cd "$pkg" && for f in "$NAME.ovf" "$vmdk"; do echo "SHA256($f)= $(sha256sum "$f" | cut -d' ' -f1)"; done) \
	>"$pkg/$NAME.mf"
# DSP0243 clause 5.3: a tar (ustar) whose first member is the descriptor, then the manifest, then
# the files in the order References lists them. Owner and times fixed: reproducible.
epoch=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)
tar --format=ustar --owner=0 --group=0 --numeric-owner --mode=0644 --mtime="@$epoch" \
	-C "$pkg" -cf "$OUT_OVA.tmp" "$NAME.ovf" "$NAME.mf" "$vmdk"
mv "$OUT_OVA.tmp" "$OUT_OVA"
echo "$OUT_OVA"
