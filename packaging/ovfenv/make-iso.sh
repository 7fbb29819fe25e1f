#!/bin/bash
# Make the OVF environment CD-ROM as vSphere's "ISO image" transport does: an ISO 9660 volume
# labelled "OVF ENV" with ovf-env.xml in its root directory (Joliet for the long name, Rock Ridge
# too; the agent reads the Joliet name first, then the level-1 name OVF_ENV.XML).
#
#   packaging/ovfenv/make-iso.sh OVF_ENV_XML OUT.iso
#
# The document holds one-time secrets: OUT.iso is created with mode 0600 (never wider, not even
# for a moment) and the temporary copy lives in a private directory. The input is not checked
# here, so tests can put a malformed document on the CD-ROM on purpose.
set -euo pipefail

die() { echo "packaging/ovfenv/make-iso.sh: error: $*" >&2; exit 2; }

[ $# -eq 2 ] || die "usage: make-iso.sh OVF_ENV_XML OUT.iso"
in=$1
out=$2
[ -f "$in" ] && [ -r "$in" ] || die "cannot read $in"
[ -d "$(dirname "$out")" ] || die "directory $(dirname "$out") does not exist"

if ! command -v genisoimage >/dev/null; then
	[ "$(id -u)" = 0 ] || die "genisoimage is not installed (apt-get install genisoimage)"
	echo "packaging/ovfenv/make-iso.sh: installing genisoimage" >&2
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends genisoimage >&2
fi

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/root"
cp "$in" "$tmp/root/ovf-env.xml"

genisoimage -quiet -input-charset utf-8 -V "OVF ENV" -J -R -o "$tmp/out.iso" "$tmp/root"
# Rename into place: a reader never sees a half-written image, and the mode is 0600 from creation.
mv -f "$tmp/out.iso" "$out"
echo "$out"
