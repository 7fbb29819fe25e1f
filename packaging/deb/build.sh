#!/bin/bash
# Build the agent's Debian package, build/firsttrust-agent_<version>_all.deb, with dpkg-deb alone
# (no debhelper, no pip, no venv): the `firsttrust` core and the `agent` source tree go to Debian's
# dist-packages as firsttrust/ and firsttrust/agent/ (one import name, as pyproject.toml maps it),
# so the agent runs on Debian 12's own python3-* packages.
#
#   packaging/deb/build.sh [--units-dir DIR] [--out-dir DIR] [--lintian]
#
# Prints the .deb's path as the last line on stdout; progress and timing go to stderr.
# The output is reproducible: the same tree (and SOURCE_DATE_EPOCH, by default the last commit's
# time) gives the same bytes, which lets packaging/image/build.sh cache images by the .deb's hash.
set -euo pipefail

PACKAGE=firsttrust-agent
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/packaging/deb
UNITS_DIR=$REPO/systemd
OUT_DIR=$REPO/build
RUN_LINTIAN=no
# The units the package must ship; both are enabled at installation.
REQUIRED_UNITS=(firsttrust-provision.service firsttrust-agent.service)

die() { echo "packaging/deb/build.sh: error: $*" >&2; exit 1; }
log() { echo "packaging/deb/build.sh: $*" >&2; }

while [ $# -gt 0 ]; do
	case "$1" in
	--units-dir) UNITS_DIR=$(realpath "$2"); shift 2 ;;
	--out-dir) OUT_DIR=$(realpath -m "$2"); shift 2 ;;
	--lintian) RUN_LINTIAN=yes; shift ;;
	-h|--help) sed -n '2,/^set -euo/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done

started=$(date +%s.%N)
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"

for unit in "${REQUIRED_UNITS[@]}"; do
	[ -f "$UNITS_DIR/$unit" ] ||
		die "unit file $UNITS_DIR/$unit is missing: the package needs ${REQUIRED_UNITS[*]} in systemd/"
done

# PEP 440 -> Debian: pre-releases sort before the release ("0.2.0rc1" -> "0.2.0~rc1").
version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
	"$REPO/pyproject.toml")
deb_version=$(printf '%s' "$version" | sed -E 's/\.?(a|b|rc|dev)([0-9]+)/~\1\2/g')
[[ $deb_version =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "cannot turn version '$version' into a Debian version"

# Reproducible timestamps: the last commit's time (or an explicit SOURCE_DATE_EPOCH).
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH

maintainer=$(git -C "$REPO" log -1 --format='%an <%ae>' 2>/dev/null || true)
maintainer=${maintainer:-firsttrust maintainers <root@localhost>}

stage=$OUT_DIR/deb/$PACKAGE
deb=$OUT_DIR/${PACKAGE}_${deb_version}_all.deb
rm -rf "$stage"
mkdir -p "$stage/DEBIAN" "$OUT_DIR"

# --- the files -----------------------------------------------------------------------------------
site=$stage/usr/lib/python3/dist-packages
mkdir -p "$site"
copy_tree() {  # copy_tree SOURCE-FOLDER DESTINATION: Python sources only, no caches
	mkdir -p "$2"
	tar -C "$REPO/$1" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.pyo' -cf - . | tar -C "$2" -xf -
}
copy_tree firsttrust "$site/firsttrust"
copy_tree agent "$site/firsttrust/agent"
# A syntax error in a file someone is still writing fails the build, not the appliance's first boot.
pycache=$(mktemp -d)
trap 'rm -rf "$pycache"' EXIT
PYTHONPYCACHEPREFIX=$pycache python3 -m compileall -q "$site" >/dev/null ||
	die "the Python sources do not compile (see above)"

install -D -m 0755 /dev/stdin "$stage/usr/bin/$PACKAGE" <<'EOF'
#!/usr/bin/python3 -I
# firsttrust-agent, as installed by the Debian package. -I: isolated mode, so neither PYTHON*
# variables nor the current directory or a user site-packages can change what root runs.
import sys

from firsttrust.agent.cli import main

sys.exit(main())
EOF

units=()
enable=()
for path in "$UNITS_DIR"/*.service "$UNITS_DIR"/*.socket "$UNITS_DIR"/*.timer "$UNITS_DIR"/*.path; do
	[ -f "$path" ] || continue
	name=$(basename "$path")
	install -D -m 0644 "$path" "$stage/lib/systemd/system/$name"
	units+=("$name")
	grep -Eq '^[[:space:]]*(WantedBy|RequiredBy)=' "$path" && enable+=("$name")
done
for unit in "${REQUIRED_UNITS[@]}"; do
	grep -Eq '^[[:space:]]*(WantedBy|RequiredBy)=' "$UNITS_DIR/$unit" ||
		die "$UNITS_DIR/$unit has no [Install] WantedBy=/RequiredBy=: the package could not enable it"
done

install -D -m 0644 "$HERE/agent.toml" "$stage/etc/firsttrust/agent.toml"
printf '/etc/firsttrust/agent.toml\n' >"$stage/DEBIAN/conffiles"

install -d -m 0755 "$stage/usr/share/doc/$PACKAGE"
cat >"$stage/usr/share/doc/$PACKAGE/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: firsttrust

Files: *
Copyright: $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y) $(printf '%s' "$maintainer" | sed 's/ <.*//')
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF

# Debian policy 12.7: a native package ships its changelog. This one only records the build.
{
	printf '%s (%s) bookworm; urgency=medium\n\n' "$PACKAGE" "$deb_version"
	printf '  * Built from the firsttrust source tree%s.\n\n' \
		"$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null | sed 's/^/ at commit /')"
	printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$stage/usr/share/doc/$PACKAGE/changelog.gz"

# --- modes, timestamps, control --------------------------------------------------------------------
find "$stage" -path "$stage/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
find "$stage/usr/lib" "$stage/etc" "$stage/lib" "$stage/usr/share" -type f -exec chmod 0644 {} +

for script in postinst prerm postrm; do
	sed "s|@UNITS@|${enable[*]}|" "$HERE/$script" >"$stage/DEBIAN/$script"
	chmod 0755 "$stage/DEBIAN/$script"
done

installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s|@VERSION@|$deb_version|" -e "s|@MAINTAINER@|$maintainer|" -e "s|@INSTALLED_SIZE@|$installed_size|" \
	"$HERE/control" >"$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles"

(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
	xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums"

find "$stage" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +

rm -f "$deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null

if [ "$RUN_LINTIAN" = yes ]; then
	if command -v lintian >/dev/null; then
		lintian --tag-display-limit 0 "$deb" >&2 || log "lintian reported errors (above)"
	else
		log "lintian not installed; skipped"
	fi
fi

log "$(basename "$deb"): units ${units[*]} (enabled: ${enable[*]}), $(stat -c %s "$deb") bytes," \
	"sha256 $(sha256sum "$deb" | cut -c1-16)…, built in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
echo "$deb"
