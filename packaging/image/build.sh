#!/bin/bash
# Build the appliance image: a Debian 12 root file system with the firsttrust agent installed,
# as build/image/<key>/disk.raw (ext4, label "root", no partition table), with the kernel and
# initrd beside it (vmlinuz, initrd.img) for direct kernel boot (qemu -kernel/-initrd), so no
# boot loader is needed.
#
#   packaging/image/build.sh [--deb PATH] [--core-deb PATH] [--variant release|test]
#                            [--units-dir DIR] [--size SIZE] [--rebuild] [--rebuild-base]
#
#   --deb PATH       install this agent .deb (default: build the packages with packaging/deb/build.sh)
#   --core-deb PATH  and this python3-firsttrust .deb, the core the agent depends on (default: the
#                    one beside --deb at the same version)
#   --variant test   add the test-only unit that takes root's SSH key from QEMU's fw_cfg
#                    (tests/vm); "release" (the default) has no way in but the agent
#   --units-dir DIR  passed to packaging/deb/build.sh
#   --size SIZE      file system size (default 2G; the file is sparse)
#   --rebuild        ignore a cached image;  --rebuild-base  also re-bootstrap the base system
#
# Environment: KEEP_IMAGES (default 4) images are kept in build/image/, older ones removed.
#
# Nothing is mounted: no loop devices, no /proc or /sys in the chroot. The base system comes
# from mmdebstrap with --skip=chroot/mount (debootstrap's second stage always tries to mount
# /proc in the target), the .deb is installed with apt inside the chroot, and the disk image is
# made by `mkfs.ext4 -d`. Caching, two levels:
#   build/image/base-<key>/rootfs  Debian alone; key = suite, mirrors, package list (including
#                                  the .deb's dependencies and recommendations)
#   build/image/<key>/             the image; key = this script, the overlay files, the base key,
#                                  the two .debs' sha256, the variant and the size
# A second run with the same inputs reuses build/image/<key>/ and only prints its path.
#
# Prints the image directory as the last line on stdout; progress and timing go to stderr.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/packaging/image
SCRIPT=$HERE/build.sh
OUT=$REPO/build/image

SUITE=bookworm
MIRRORS=(
	"deb http://deb.debian.org/debian bookworm main"
	"deb http://deb.debian.org/debian bookworm-updates main"
	"deb http://deb.debian.org/debian-security bookworm-security main"
)
# What an appliance needs besides the agent's own dependencies (read from the .deb):
# init and device management, the cloud kernel (virtio and VMware drivers, no firmware), the
# root file system's fsck, networking (systemd-networkd), sshd, and logind (ACPI power button).
BASE_PACKAGES=(
	systemd-sysv udev dbus libpam-systemd kmod e2fsprogs
	linux-image-cloud-amd64
	iproute2 netbase ca-certificates
	openssh-server
	python3
	procps less
)
HOSTNAME_=firsttrust-appliance
ACCOUNT="admin"

DEB=
CORE_DEB=
VARIANT=release
UNITS_ARGS=()
SIZE=2G
REBUILD=no
REBUILD_BASE=no

die() { echo "packaging/image/build.sh: error: $*" >&2; exit 1; }
log() { echo "packaging/image/build.sh: [$(elapsed)] $*" >&2; }
started=$(date +%s.%N)
elapsed() { awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1fs", b - a }'; }

while [ $# -gt 0 ]; do
	case "$1" in
	--deb) DEB=$(realpath "$2"); shift 2 ;;
	--core-deb) CORE_DEB=$(realpath "$2"); shift 2 ;;
	--variant) VARIANT=$2; shift 2 ;;
	--units-dir) UNITS_ARGS=(--units-dir "$2"); shift 2 ;;
	--size) SIZE=$2; shift 2 ;;
	--rebuild) REBUILD=yes; shift ;;
	--rebuild-base) REBUILD=yes; REBUILD_BASE=yes; shift ;;
	-h|--help) sed -n '2,/^set -euo/s/^# \{0,1\}//p' "$SCRIPT"; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
case "$VARIANT" in release|test) ;; *) die "--variant must be release or test" ;; esac
[ "$(id -u)" = 0 ] || die "must run as root (chroot, file ownership in the image)"

# --- tools ---------------------------------------------------------------------------------------
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# --- the packages --------------------------------------------------------------------------------
# The agent and the core it depends on (python3-firsttrust); the requester's package has no
# place on an appliance.
if [ -z "$DEB" ]; then
	mapfile -t built < <("$REPO/packaging/deb/build.sh" "${UNITS_ARGS[@]}")
	[ ${#built[@]} -gt 0 ] || die "packaging/deb/build.sh built nothing"
	DEB=${built[-1]}
	for path in "${built[@]}"; do
		case "$(basename "$path")" in python3-firsttrust_*) CORE_DEB=$path ;; esac
	done
fi
[ -f "$DEB" ] || die "no package at $DEB"
[ "$(dpkg-deb -f "$DEB" Package)" = firsttrust-agent ] || die "$DEB is not the firsttrust-agent package"
if [ -z "$CORE_DEB" ]; then
	CORE_DEB=$(dirname "$DEB")/python3-firsttrust_$(dpkg-deb -f "$DEB" Version)_all.deb
fi
[ -f "$CORE_DEB" ] || die "no core package at $CORE_DEB (the agent depends on it; --core-deb PATH)"
[ "$(dpkg-deb -f "$CORE_DEB" Package)" = python3-firsttrust ] || die "$CORE_DEB is not the python3-firsttrust package"
deb_sha=$(sha256sum "$DEB" | cut -d' ' -f1)
core_deb_sha=$(sha256sum "$CORE_DEB" | cut -d' ' -f1)

# The packages' Depends and Recommends go into the base, so installing the .debs later needs no
# download (and a new agent build reuses the base). "a | b" takes a; versions are dropped, and so
# are our own packages, which no mirror has.
mapfile -t deb_deps < <(for deb in "$CORE_DEB" "$DEB"; do dpkg-deb -f "$deb" Depends Recommends; done |
	sed 's/^[A-Za-z-]*: //' | tr ',' '\n' |
	sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' | grep -v '^$' | grep -vx 'python3-firsttrust' | sort -u)
mapfile -t packages < <(printf '%s\n' "${BASE_PACKAGES[@]}" "${deb_deps[@]}" | sort -u)

MMDEBSTRAP_ARGS=(
	--mode=root --variant=minbase --format=directory
	# No mounts anywhere: maintainer scripts run without /proc and /sys (see above).
	--skip=chroot/mount
	# The package lists stay in the base so that `apt-get install ./agent.deb` can resolve.
	--skip=cleanup/apt/lists
	--aptopt='Apt::Install-Recommends "false"'
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
	--include="$(IFS=,; echo "${packages[*]}")"
)

hash_of() { sha256sum | cut -c1-16; }
base_key=$(printf '%s\n' base-v1 "$SUITE" "${MIRRORS[@]}" "${MMDEBSTRAP_ARGS[@]}" | hash_of)
overlays=("$HERE/rootfs")
[ "$VARIANT" = test ] && overlays+=("$HERE/rootfs-test")
image_key=$( {
	cat "$SCRIPT"
	echo "$base_key $deb_sha $core_deb_sha $VARIANT $SIZE"
	for dir in "${overlays[@]}"; do
		(cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
	done
} | hash_of)

base=$OUT/base-$base_key
image=$OUT/$image_key
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9 # one build at a time: two test sessions must not both build the same key

if [ "$REBUILD" = no ] && [ -f "$image/disk.raw" ] && [ -f "$image/build-info.json" ]; then
	log "cached image $image_key (variant $VARIANT, $(basename "$DEB") sha256 ${deb_sha:0:16}…)"
	echo "$image"
	exit 0
fi

# --- stage 1: the base system (cached) -----------------------------------------------------------
if [ "$REBUILD_BASE" = yes ] || [ ! -f "$base/complete" ]; then
	log "bootstrapping Debian $SUITE ($((${#packages[@]})) packages requested) into base-$base_key"
	rm -rf "$base" "$base.tmp"
	mkdir -p "$base.tmp"
	base_started=$(date +%s)
	# --verbose: the maintainer scripts' output goes to the log (they run without /proc).
	mmdebstrap --verbose "${MMDEBSTRAP_ARGS[@]}" "$SUITE" "$base.tmp/rootfs" "${MIRRORS[@]}" >"$base.tmp/mmdebstrap.log" 2>&1 ||
		{ tail -n 30 "$base.tmp/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $base.tmp/mmdebstrap.log)"; }
	echo "$(($(date +%s) - base_started))" >"$base.tmp/seconds"
	touch "$base.tmp/complete"
	mv "$base.tmp" "$base"
	log "base system ready ($(du -sh "$base/rootfs" | cut -f1))"
else
	log "cached base system base-$base_key"
fi

# --- stage 2: the appliance ----------------------------------------------------------------------
work=$OUT/.work-$image_key
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
log "copying the base system"
cp -a "$base/rootfs" "$root"

in_root() {
	chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 HOME=/root \
		DEBIAN_FRONTEND=noninteractive "$@"
}

# Services must not start inside the chroot (invoke-rc.d / deb-systemd-invoke honour this).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

log "installing $(basename "$CORE_DEB") and $(basename "$DEB") with apt"
cp "$CORE_DEB" "$root/tmp/python3-firsttrust.deb"
cp "$DEB" "$root/tmp/firsttrust-agent.deb"
in_root apt-get install -y -q -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confold \
	/tmp/python3-firsttrust.deb /tmp/firsttrust-agent.deb \
	>"$work/apt-install.log" 2>&1 || { cat "$work/apt-install.log" >&2; die "apt-get install of the agent failed"; }
grep -E '^(Setting up|The following NEW|W: |E: )' "$work/apt-install.log" | sed 's/^/    /' >&2 || true

for dir in "${overlays[@]}"; do
	cp -a --no-preserve=ownership "$dir/." "$root/"
done

log "configuring the appliance"
echo "$HOSTNAME_" >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$HOSTNAME_" \
	>"$root/etc/hosts"
# The root file system by label: /dev/vda under QEMU, /dev/sda on VMware's paravirtual SCSI.
printf 'LABEL=root\t/\text4\terrors=remount-ro\t0\t1\n' >"$root/etc/fstab"

# The account whose password SEC-A becomes (agent.toml: account = "admin"). Created locked
# ("!" in /etc/shadow): nobody can log in with a password until the agent has set it.
in_root useradd --create-home --shell /bin/bash --user-group --comment "appliance administrator" "$ACCOUNT"
in_root passwd --lock "$ACCOUNT" >/dev/null

enable_units=(systemd-networkd.service ssh-host-keys.service)
[ "$VARIANT" = test ] && enable_units+=(test-ssh-access.service)
in_root systemctl enable "${enable_units[@]}" 2>&1 | sed 's/^/    /' >&2
for unit in firsttrust-provision.service firsttrust-agent.service ssh.service systemd-networkd.service; do
	in_root systemctl is-enabled --quiet "$unit" || die "$unit is not enabled in the image"
done

# The check the agent's SRP depends on: pysrp's OpenSSL backend loads in the image.
srp_backend=$(in_root python3 -I -c 'from firsttrust import srp6a; print(srp6a.BACKEND)' 2>"$work/srp.err") ||
	{ cat "$work/srp.err" >&2; die "firsttrust.srp6a does not import in the image"; }
[ "$srp_backend" = openssl ] || die "SRP backend in the image is '$srp_backend', not openssl: $(cat "$work/srp.err")"
in_root firsttrust-agent --help >/dev/null || die "firsttrust-agent does not run in the image"

# Nothing secret and nothing per-machine is made at build time: SSH host keys are made at first
# boot (ssh-host-keys.service), the machine id too (empty file = first boot, presets applied).
rm -f "$root"/etc/ssh/ssh_host_*
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/systemd/random-seed" "$root/var/lib/systemd/credential.secret"

# Leave no build machinery behind.
rm -f "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/tmp/* "$root"/var/tmp/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
	"$root"/var/cache/apt/archives/*.deb "$root"/var/cache/debconf/*-old "$root"/var/log/apt/* \
	"$root/var/log/dpkg.log" "$root/var/log/alternatives.log"
leftover=$(find "$root/etc/ssh" -name 'ssh_host_*' | head -n1)
[ -z "$leftover" ] || die "secret left in the image: $leftover"

kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n1)
[ -n "$kernel" ] && [ -n "$initrd" ] || die "no kernel or initrd in $root/boot"
# The OVA declares a pvscsi disk (packaging/ova/descriptor.py), tests boot from NVMe and virtio,
# the CD-ROM is on PIIX IDE: the initrd must carry every one of those drivers, not only those of
# the build machine (initramfs-tools' MODULES=dep would look at the chroot's host).
grep -qx 'MODULES=most' "$root/etc/initramfs-tools/initramfs.conf" ||
	die "initramfs-tools is not set to MODULES=most in the image"
initrd_modules=$(in_root lsinitramfs "/boot/$(basename "$initrd")" | sed -n 's|.*/\([^/]*\)\.ko\(\.[a-z]*\)\{0,1\}$|\1|p')
for module in vmw_pvscsi ata_piix virtio_blk virtio_scsi; do
	grep -qx "$module" <<<"$initrd_modules" || die "the initrd has no $module module"
done

log "making the ext4 file system ($SIZE)"
mkdir -p "$work/out"
mkfs.ext4 -q -F -L root -d "$root" "$work/out/disk.raw" "$SIZE" 2>&1 | sed 's/^/    /' >&2
cp "$kernel" "$work/out/vmlinuz"
cp "$initrd" "$work/out/initrd.img"
cp "$work/apt-install.log" "$work/out/"

in_root dpkg-query -W -f='${Package}=${Version}\n' >"$work/out/packages.txt"
python3 - "$work/out/build-info.json" <<EOF
import json, sys
json.dump({
    "image_key": "$image_key",
    "base_key": "$base_key",
    "variant": "$VARIANT",
    "suite": "$SUITE",
    "deb": "$(basename "$DEB")",
    "deb_sha256": "$deb_sha",
    "core_deb": "$(basename "$CORE_DEB")",
    "core_deb_sha256": "$core_deb_sha",
    "kernel": "$(basename "$kernel")",
    "srp_backend": "$srp_backend",
    "hostname": "$HOSTNAME_",
    "account": "$ACCOUNT",
    "kernel_cmdline": "root=LABEL=root ro console=ttyS0",
    "build_seconds": round($(date +%s.%N) - $started, 1),
}, open(sys.argv[1], "w"), indent=2)
EOF

rm -rf "$image"
mv "$work/out" "$image"

# Each image is a 2G sparse file (~500M used): keep the KEEP_IMAGES newest, and the newest
# two base systems. (A VM still running on a pruned image keeps its open file.)
KEEP_IMAGES=${KEEP_IMAGES:-4}
find "$OUT" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' -printf '%T@ %p\n' | sort -rn |
	tail -n +$((KEEP_IMAGES + 1)) | cut -d' ' -f2- | xargs -r rm -rf
find "$OUT" -mindepth 1 -maxdepth 1 -type d -name 'base-*' ! -name '*.tmp' -printf '%T@ %p\n' | sort -rn |
	tail -n +3 | cut -d' ' -f2- | xargs -r rm -rf
log "image $image_key ready: $(du -h --apparent-size "$image/disk.raw" | cut -f1) file system," \
	"$(du -h "$image/disk.raw" | cut -f1) used; SRP backend $srp_backend; $(basename "$kernel")"
log "built in $(elapsed | tr -d ' ')"
echo "$image"
