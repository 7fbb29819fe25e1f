#!/bin/bash
# Build firsttrust's three Debian packages under build/, with dpkg-deb alone (no debhelper, no pip,
# no venv), all on Debian 12's own python3-* packages:
#
#   python3-firsttrust_<version>_all.deb    the core: /usr/lib/python3/dist-packages/firsttrust/*.py,
#                                           and firsttrust/common/ (the I/O helpers both halves share)
#   firsttrust-requester_<version>_all.deb  firsttrust/requester/, /usr/bin/firsttrust, its man page
#   firsttrust-agent_<version>_all.deb      firsttrust/agent/, /usr/bin/firsttrust-agent, the systemd
#                                           units, /etc/firsttrust/agent.toml, its man page
#
# One import name, as pyproject.toml maps it: the repository's agent/, requester/ and common/ become
# firsttrust/agent/, firsttrust/requester/ and firsttrust/common/. No file is in two packages; both halves depend on
# the core at exactly the same version.
#
#   packaging/deb/build.sh [--units-dir DIR] [--out-dir DIR] [--lintian]
#
# Prints the three .debs' paths on stdout, one a line, the agent's last (what
# packaging/image/build.sh and tests/vm take with `tail -n1`); progress and timing go to stderr.
# --lintian runs lintian on each and fails the build on any E: or W: line.
#
# The man pages are generated from the CLIs' argparse definitions (packaging/man/generate.py) by
# importing the staged tree with Debian's python3 (DEB_PYTHON, default /usr/bin/python3), so the
# build needs what the packages depend on: python3-aiohttp python3-cryptography python3-srp python3-tqdm
# python3-defusedxml (installed here when missing and running as root).
#
# The output is reproducible: the same tree (and SOURCE_DATE_EPOCH, by default the last commit's
# time) gives the same bytes, which lets packaging/image/build.sh cache images by the .debs' hashes.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/packaging/deb
UNITS_DIR=$REPO/systemd
OUT_DIR=$REPO/build
RUN_LINTIAN=no
DEB_PYTHON=${DEB_PYTHON:-/usr/bin/python3}
CORE=python3-firsttrust
AGENT=firsttrust-agent
REQUESTER=firsttrust-requester
# The units the agent's package must ship; both are enabled at installation.
REQUIRED_UNITS=(firsttrust-provision.service firsttrust-agent.service)
# What importing the CLIs (for their man pages) needs from Debian.
BUILD_DEPENDS=(python3-aiohttp python3-cryptography python3-srp python3-defusedxml python3-tqdm)

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
[ -x "$DEB_PYTHON" ] || die "$DEB_PYTHON not found (apt-get install python3)"

for unit in "${REQUIRED_UNITS[@]}"; do
	[ -f "$UNITS_DIR/$unit" ] ||
		die "unit file $UNITS_DIR/$unit is missing: the package needs ${REQUIRED_UNITS[*]} in systemd/"
done

# PEP 440 -> Debian: pre-releases sort before the release ("0.2.0rc1" -> "0.2.0~rc1").
version=$("$DEB_PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
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
commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || true)

mkdir -p "$OUT_DIR/deb"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- the Python tree, as installed -----------------------------------------------------------------
# Staged whole once, so that it can be checked and its CLIs imported together; each package then
# takes its part.
tree=$work/dist-packages
copy_tree() {  # copy_tree SOURCE-FOLDER DESTINATION: Python sources only, no caches
	mkdir -p "$2"
	tar -C "$REPO/$1" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.pyo' -cf - . | tar -C "$2" -xf -
}
copy_tree firsttrust "$tree/firsttrust"
copy_tree agent "$tree/firsttrust/agent"
copy_tree requester "$tree/firsttrust/requester"
copy_tree common "$tree/firsttrust/common"
# The core is firsttrust/ without its two halves, with common/ (the I/O helpers both halves share);
# nothing else may hide in it unpackaged.
unexpected=$(find "$tree/firsttrust" -mindepth 1 -maxdepth 1 ! -name '*.py' ! -name agent ! -name requester \
	! -name common -printf '%P ')
[ -z "$unexpected" ] || die "firsttrust/ holds $unexpected: no package would ship it (packaging/deb/build.sh)"
# A syntax error in a file someone is still writing fails the build, not the appliance's first boot.
PYTHONPYCACHEPREFIX=$work/pycache "$DEB_PYTHON" -m compileall -q "$tree" >/dev/null ||
	die "the Python sources do not compile (see above)"

# --- man pages, from the argparse definitions --------------------------------------------------------
missing=()
for package in "${BUILD_DEPENDS[@]}"; do
	dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		log "installing the build dependencies ${missing[*]}"
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			"${missing[@]}"; } >&2 || die "could not install ${missing[*]}"
	else
		die "the man pages import the CLIs with $DEB_PYTHON, which needs: apt-get install ${missing[*]}"
	fi
fi
mandir=$work/man
# -I: nothing from the environment or a user site; -B: no byte-code in the staged tree.
"$DEB_PYTHON" -I -B "$REPO/packaging/man/generate.py" --site "$tree" --out-dir "$mandir" firsttrust firsttrust-agent \
	>/dev/null || die "generating the man pages failed (above): the CLIs must import with $DEB_PYTHON"
find "$tree" -name __pycache__ -prune -exec rm -rf {} +

# --- one package -----------------------------------------------------------------------------------
stage_of() { echo "$OUT_DIR/deb/$1"; }
deb_of() { echo "$OUT_DIR/${1}_${deb_version}_all.deb"; }

begin() {  # begin PACKAGE: an empty staging directory with the package's documentation
	local package=$1 stage
	stage=$(stage_of "$package")
	rm -rf "$stage"
	mkdir -p "$stage/DEBIAN" "$stage/usr/share/doc/$package"
	cat >"$stage/usr/share/doc/$package/copyright" <<-EOF
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
		printf 'firsttrust (%s) bookworm; urgency=medium\n\n' "$deb_version"
		printf '  * Built from the firsttrust source tree%s.\n\n' "${commit:+ at commit $commit}"
		printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
	} | gzip -9n >"$stage/usr/share/doc/$package/changelog.gz"
}

python_part() {  # python_part PACKAGE RELATIVE-PATH...: move these parts of the staged tree in
	local package=$1 stage part
	stage=$(stage_of "$package")
	shift
	for part in "$@"; do
		mkdir -p "$(dirname "$stage/usr/lib/python3/dist-packages/$part")"
		cp -a "$tree/$part" "$stage/usr/lib/python3/dist-packages/$part"
	done
}

launcher() {  # launcher PACKAGE COMMAND MODULE: /usr/bin/COMMAND running MODULE's main()
	install -D -m 0755 /dev/stdin "$(stage_of "$1")/usr/bin/$2" <<-EOF
	#!/usr/bin/python3 -I
	# $2, as installed by the Debian package $1. -I: isolated mode, so neither PYTHON*
	# variables nor the current directory or a user site-packages can change what runs.
	import sys

	from $3 import main

	sys.exit(main())
	EOF
}

man_page() {  # man_page PACKAGE COMMAND: the generated page, gzipped without a timestamp
	install -d "$(stage_of "$1")/usr/share/man/man1"
	gzip -9n <"$mandir/$2.1" >"$(stage_of "$1")/usr/share/man/man1/$2.1.gz"
}

finish() {  # finish PACKAGE CONTROL-TEMPLATE [MAINTAINER-SCRIPT-TEMPLATE...]: modes, control, the .deb
	local package=$1 control=$2 stage deb script installed_size
	stage=$(stage_of "$package")
	deb=$(deb_of "$package")
	shift 2
	find "$stage" -path "$stage/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
	find "$stage" -path "$stage/DEBIAN" -prune -o -path "$stage/usr/bin" -prune -o -type f -exec chmod 0644 {} +
	for script in "$@"; do  # PACKAGE.postinst or python.postinst: installed as DEBIAN/postinst
		sed -e "s|@UNITS@|${enable[*]}|" -e "s|@PACKAGE@|$package|g" "$HERE/$script" >"$stage/DEBIAN/${script##*.}"
		chmod 0755 "$stage/DEBIAN/${script##*.}"
	done
	installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$stage" | cut -f1)
	sed -e "s|@VERSION@|$deb_version|g" -e "s|@MAINTAINER@|$maintainer|" -e "s|@INSTALLED_SIZE@|$installed_size|" \
		"$HERE/$control" >"$stage/DEBIAN/control"
	chmod 0644 "$stage/DEBIAN/control"
	[ ! -f "$stage/DEBIAN/conffiles" ] || chmod 0644 "$stage/DEBIAN/conffiles"
	(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
		xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
	chmod 0644 "$stage/DEBIAN/md5sums"
	bytecode=$(find "$stage" \( -name __pycache__ -o -name '*.py[co]' \) -printf '%P ')
	[ -z "$bytecode" ] || die "$package: byte-code in the package: $bytecode"
	find "$stage" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
	rm -f "$deb"
	dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
}

# --- python3-firsttrust: the core ------------------------------------------------------------------
begin "$CORE"
mkdir -p "$(stage_of "$CORE")/usr/lib/python3/dist-packages/firsttrust"
(cd "$tree" && find firsttrust -mindepth 1 -maxdepth 1 -name '*.py' -printf '%P\n') | while read -r module; do
	python_part "$CORE" "firsttrust/$module"
done
python_part "$CORE" firsttrust/common
enable=()
finish "$CORE" python3-firsttrust.control python.postinst python.prerm

# --- firsttrust-requester: the CLI and the library -------------------------------------------------
begin "$REQUESTER"
python_part "$REQUESTER" firsttrust/requester
launcher "$REQUESTER" firsttrust firsttrust.requester.cli
man_page "$REQUESTER" firsttrust
finish "$REQUESTER" firsttrust-requester.control python.postinst python.prerm

# --- firsttrust-agent: the appliance's agent -------------------------------------------------------
begin "$AGENT"
stage=$(stage_of "$AGENT")
python_part "$AGENT" firsttrust/agent
launcher "$AGENT" firsttrust-agent firsttrust.agent.cli
man_page "$AGENT" firsttrust-agent

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
finish "$AGENT" firsttrust-agent.control firsttrust-agent.postinst firsttrust-agent.prerm firsttrust-agent.postrm

# --- checks, report --------------------------------------------------------------------------------
debs=("$(deb_of "$CORE")" "$(deb_of "$REQUESTER")" "$(deb_of "$AGENT")")
# No file in two packages (dpkg would refuse to install the second).
shared=$(for deb in "${debs[@]}"; do dpkg-deb --fsys-tarfile "$deb" | tar -t | grep -v '/$'; done | sort | uniq -d)
[ -z "$shared" ] || die "files in more than one package: $shared"

if [ "$RUN_LINTIAN" = yes ]; then
	command -v lintian >/dev/null || die "lintian not installed (apt-get install lintian)"
	# One run for the three (lintian's start-up is most of its time). Its exit status is not
	# used: any E: or W: line fails the build, whatever lintian's own fail-on setting is.
	report=$(lintian --tag-display-limit 0 "${debs[@]}" 2>/dev/null || true)
	[ -z "$report" ] || printf '%s\n' "$report" >&2
	! grep -Eq '^[EW]: ' <<<"$report" || die "lintian reported errors or warnings (above)"
	log "lintian: no errors, no warnings"
fi

for deb in "${debs[@]}"; do
	log "$(basename "$deb"): $(stat -c %s "$deb") bytes, sha256 $(sha256sum "$deb" | cut -c1-16)…"
done
log "units ${units[*]} (enabled: ${enable[*]}); built in" \
	"$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
printf '%s\n' "${debs[@]}"
