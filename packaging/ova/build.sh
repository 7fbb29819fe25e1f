#!/bin/bash
# Build the appliance OVA from the image pipeline (packaging/image/build.sh), nothing mounted:
# a GPT disk (EFI system partition with systemd-boot, the kernel and initrd from the image; the
# image's ext4 root file system), then packaging/ova/package.sh: a streamOptimized VMDK, the OVF
# descriptor (packaging/ova/descriptor.py), a SHA256 manifest, in a tar with the descriptor first.
#
#   packaging/ova/build.sh [--variant release|test] [--python PY] [--rebuild]
#                          [--deb PATH] [--units-dir DIR]
#
#   --variant test   the test image (packaging/image/rootfs-test) and a kernel command line for
#                    tests/vm: systemd's status lines and the journal on the serial console,
#                    console=ttyS0 last (the last console= is /dev/console). "release" (the
#                    default) has neither and no test access.
#   --python PY      the Python that runs descriptor.py (needs firsttrust importable; default
#                    .venv/bin/python, as `make ova` sets it up)
#   --rebuild        ignore a cached OVA (the image's own cache still applies)
#   --deb, --units-dir  passed to packaging/image/build.sh (tests/vm: FIRSTTRUST_VM_DEB, ..._UNITS_DIR)
#
# Output: build/ova/<key>/firsttrust-appliance[-test].ova with build-info.json beside it; the
# release OVA is also copied to build/firsttrust-appliance.ova. Prints the .ova's path last.
#
# Caching, on top of the image's two levels (base system, image): the OVA is keyed by this
# script, package.sh, descriptor.py, the property definition it declares, the image key, the boot loader
# binary and the variant. A warm run only prints the path.
#
# Disk layout (sectors of 512 bytes):
#   2048 ..            ESP, FAT32, 128 MiB: /EFI/BOOT/BOOTX64.EFI (systemd-boot, the removable-
#                      media path: a fresh VM has no boot entries), /loader/loader.conf,
#                      /loader/entries/firsttrust.conf, /vmlinuz, /initrd.img
#   2048 + 128 MiB ..  root, the image's ext4 (LABEL=root), type "Linux x86-64 root"
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/packaging/ova
SCRIPT=$HERE/build.sh
OUT=$REPO/build/ova

SYSTEMD_BOOT=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
ESP_MIB=128
NAME=firsttrust-appliance
VARIANT=release
PYTHON_=$REPO/.venv/bin/python
REBUILD=no
IMAGE_ARGS=()

die() { echo "packaging/ova/build.sh: error: $*" >&2; exit 1; }
log() { echo "packaging/ova/build.sh: [$(elapsed)] $*" >&2; }
started=$(date +%s.%N)
elapsed() { awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1fs", b - a }'; }

while [ $# -gt 0 ]; do
	case "$1" in
	--variant) VARIANT=$2; shift 2 ;;
	--python) PYTHON_=$2; shift 2 ;;
	--rebuild) REBUILD=yes; shift ;;
	--deb|--units-dir) IMAGE_ARGS+=("$1" "$(realpath "$2")"); shift 2 ;;
	-h|--help) sed -n '2,/^set -euo/s/^# \{0,1\}//p' "$SCRIPT"; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
case "$VARIANT" in
release) ova_name=$NAME.ova
	# The release appliance's console is the VM console (tty0); nothing on a serial port.
	cmdline="root=LABEL=root ro" ;;
test) ova_name=$NAME-test.ova
	# status lines name the unit ("Finished firsttrust-provision.service."); the journal goes to
	# the console too, and the console is the serial port: console=ttyS0 must be the last.
	cmdline="root=LABEL=root ro systemd.show_status=1 systemd.status_unit_format=name"
	cmdline+=" systemd.journald.forward_to_console=1 console=tty0 console=ttyS0" ;;
*) die "--variant must be release or test" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (the image build needs it)"
[ -x "$PYTHON_" ] || die "no Python at $PYTHON_ (make venv, or --python PY)"

# --- tools ---------------------------------------------------------------------------------------
need=()
[ -f "$SYSTEMD_BOOT" ] || need+=(systemd-boot-efi)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v sgdisk >/dev/null || need+=(gdisk)
command -v qemu-img >/dev/null || need+=(qemu-utils)
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# --- the image (its own cache) -------------------------------------------------------------------
image=$("$REPO/packaging/image/build.sh" --variant "$VARIANT" "${IMAGE_ARGS[@]}" | tail -n1)
[ -f "$image/disk.raw" ] || die "packaging/image/build.sh gave no image"
image_key=$(basename "$image")
version=$("$PYTHON_" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' \
	"$REPO/pyproject.toml")

hash_of() { sha256sum | cut -c1-16; }
key=$( {
	cat "$SCRIPT" "$HERE/package.sh" "$HERE/descriptor.py" "$REPO/requester/deployspec.py" "$SYSTEMD_BOOT"
	echo "$image_key $VARIANT $version $cmdline"
} | hash_of)
dir=$OUT/$key
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

publish() {
	# make ova's file: the release OVA at a fixed path (a copy: build/ova/ is pruned).
	if [ "$VARIANT" = release ]; then
		cp --reflink=auto "$dir/$ova_name" "$REPO/build/$ova_name.tmp"
		mv "$REPO/build/$ova_name.tmp" "$REPO/build/$ova_name"
	fi
}

if [ "$REBUILD" = no ] && [ -f "$dir/$ova_name" ] && [ -f "$dir/build-info.json" ]; then
	log "cached OVA $key (variant $VARIANT, image $image_key)"
	publish
	echo "$dir/$ova_name"
	exit 0
fi

work=$OUT/.work-$key
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

# --- the EFI system partition --------------------------------------------------------------------
log "EFI system partition: systemd-boot, the image's kernel and initrd"
esp=$work/esp.img
truncate -s "${ESP_MIB}M" "$esp"
# A fixed volume id: the same inputs give the same partition.
mkfs.vfat -F 32 -n ESP -i 46545431 "$esp" >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$esp" "$SYSTEMD_BOOT" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$image/vmlinuz" ::/vmlinuz
mcopy -i "$esp" "$image/initrd.img" ::/initrd.img
# timeout 0: straight to the default entry, no menu (the console may be a serial port nobody reads);
# editor no: the command line cannot be changed at the boot menu (init=/bin/sh would bypass everything).
printf 'default firsttrust.conf\ntimeout 0\neditor no\n' >"$work/loader.conf"
printf 'title firsttrust appliance\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$cmdline" >"$work/firsttrust.conf"
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/firsttrust.conf" ::/loader/entries/firsttrust.conf

# --- the GPT disk --------------------------------------------------------------------------------
root_bytes=$(stat -c %s "$image/disk.raw")
[ $((root_bytes % 1048576)) = 0 ] || die "the image's file system is not a whole number of MiB"
esp_start=2048
root_start=$((esp_start + ESP_MIB * 2048))
root_sectors=$((root_bytes / 512))
# The backup GPT (33 sectors) at the end; the disk rounded up to a whole MiB.
disk_bytes=$(( ((root_start + root_sectors + 33) * 512 + 1048575) / 1048576 * 1048576 ))
disk=$work/disk.raw
log "GPT disk: $((disk_bytes / 1048576)) MiB (ESP $ESP_MIB MiB, root $((root_bytes / 1048576)) MiB)"
truncate -s "$disk_bytes" "$disk"
# Fixed GUIDs, so that the same inputs give the same disk. Root's type is the Discoverable
# Partitions Specification's "Linux root (x86-64)"; the kernel finds it by LABEL=root anyway.
sgdisk --clear -U 8a3c2e51-6f57-4c55-9d2c-46545431f000 \
	-n 1:$esp_start:$((root_start - 1)) -t 1:ef00 -c 1:ESP -u 1:8a3c2e51-6f57-4c55-9d2c-46545431f001 \
	-n 2:$root_start:$((root_start + root_sectors - 1)) -t 2:8304 -c 2:root \
	-u 2:8a3c2e51-6f57-4c55-9d2c-46545431f002 "$disk" >/dev/null
dd if="$esp" of="$disk" bs=1M seek=$((esp_start / 2048)) conv=notrunc,sparse status=none
dd if="$image/disk.raw" of="$disk" bs=1M seek=$((root_start / 2048)) conv=notrunc,sparse status=none
sgdisk --verify "$disk" >"$work/sgdisk-verify.txt" 2>&1 || { cat "$work/sgdisk-verify.txt" >&2; die "sgdisk --verify failed"; }

# --- VMDK, descriptor, manifest, OVA -------------------------------------------------------------
log "streamOptimized VMDK, descriptor, manifest"
"$HERE/package.sh" --disk "$disk" --out "$work/$ova_name" --name "$NAME" --version "$version" \
	--python "$PYTHON_" >/dev/null
vmdk=$NAME-disk1.vmdk

mkdir -p "$work/out"
mv "$work/$ova_name" "$work/out/"
"$PYTHON_" - "$work/out/build-info.json" "$image/build-info.json" <<EOF
import json, sys
info = {
    "key": "$key",
    "variant": "$VARIANT",
    "ova": "$ova_name",
    "version": "$version",
    "image": json.load(open(sys.argv[2])),
    "disk_bytes": $disk_bytes,
    "esp_start_sector": $esp_start,
    "esp_sectors": $((root_start - esp_start)),
    "root_start_sector": $root_start,
    "vmdk": "$vmdk",
    "ova_bytes": $(stat -c %s "$work/out/$ova_name"),
    "kernel_cmdline": "$cmdline",
    "firmware": "efi",
    "boot_loader": "systemd-boot $(dpkg-query -W -f='${Version}' systemd-boot-efi 2>/dev/null || echo unknown)",
    "build_seconds": round($(date +%s.%N) - $started, 1),
}
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF
rm -rf "$dir"
mv "$work/out" "$dir"
publish

# Keep the newest four OVAs (two variants, two generations).
find "$OUT" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' -printf '%T@ %p\n' |
	sort -rn | tail -n +5 | cut -d' ' -f2- | xargs -r rm -rf
log "OVA $key ready: $(du -h "$dir/$ova_name" | cut -f1), disk $((disk_bytes / 1048576)) MiB virtual"
log "built in $(elapsed | tr -d ' ')"
echo "$dir/$ova_name"
