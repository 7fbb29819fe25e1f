# Every target sets itself up from nothing on Debian 12 as root: the Debian packages it needs
# (installed only when missing), then the virtualenv in .venv (rebuilt when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# What the tests need from Debian: a Python with venv, the OpenSSL runtime pysrp's fast backend
# loads (libssl3, not libssl-dev: firsttrust.srp6a finds libssl.so.3 itself), and the tools the
# agent drives (chpasswd from passwd; vmtoolsd and vmware-rpctool from open-vm-tools, which the
# suite runs for real outside VMware and compares the emulator with), strace (the kill -9 matrix's
# killer, tests/fault) and ssh-keygen (the demo's known_hosts check); genisoimage and xorriso make
# the real ISO images the agent's ISO 9660 reader is checked against (tests/unit/test_iso9660.py:
# without them those tests skip, and a fresh CI machine would never run them).
# systemd-python builds from source: libsystemd-dev, pkg-config, a compiler and Python headers.
DEB_PACKAGES := python3 python3-venv python3-pip python3-dev libssl3 passwd ca-certificates \
                libsystemd-dev pkg-config gcc systemd open-vm-tools openssh-client strace \
                genisoimage xorriso
# tests/integration/test_fleet*.py start a real PostgreSQL server (initdb, pg_ctl as an unprivileged
# user) for the fleet store (docs/fleet.md); libpq5 comes with it (Debian 12's psycopg loads it).
DEB_PACKAGES += postgresql
# tests/packaging: what packaging/deb/build.sh needs (it imports the CLIs with Debian's python3
# to generate their man pages) and checks the .debs with (man-db, lintian).
DEB_BUILD_PACKAGES := dpkg python3-aiohttp python3-cryptography python3-srp python3-defusedxml python3-tqdm
DEB_PACKAGES += $(DEB_BUILD_PACKAGES) lintian man-db
# The lab's vCenter: govmomi's simulator, built offline from Debian's Go and govmomi source (0.24.2)
# by lab/vcsim.py at first use and cached under build/vcsim/, keyed by its source.
VCSIM_DEB_PACKAGES := golang-go golang-github-vmware-govmomi-dev

.PHONY: demo test mutation-check test-debian-versions vm-test vm-deps vcsim-deps bench system-deps venv clean deb dist \
        ova ova-deps ova-package-deps

# The local end-to-end demo: govmomi's vCenter simulator (built at first use, cached under
# build/vcsim/), appliances deployed through its API on 127.0.0.2, ..., all three embodiments.
demo: venv vcsim-deps
	$(VENV)/bin/firsttrust-lab demo

# The appliance OVA (packaging/ova/build.sh): build/firsttrust-appliance.ova, the release variant.
# The image pipeline and its two caches, then a GPT disk with systemd-boot (mtools, dosfstools,
# gdisk, Debian's systemd-boot-efi), a streamOptimized VMDK (qemu-utils), descriptor, manifest.
# Root only; measured on a shared 2-core host: 342 s cold, ~60-80 s with a new .deb, 6 s cached.
OVA_DEB_PACKAGES := qemu-utils mmdebstrap e2fsprogs dosfstools mtools gdisk systemd-boot-efi dpkg-dev

ova-deps:
	@$(call apt_install_missing,$(OVA_DEB_PACKAGES),--no-install-recommends)

ova: venv ova-deps
	packaging/ova/build.sh --variant release --python $(PY)

# The appliance under QEMU (TCG): builds the test variant of the OVA (cached in build/ova/), boots
# its own disk with EFI firmware (OVMF), enrolls it from the host (tests/vm/harness.py). Root only; CI runs it (.ci/run).
VM_DEB_PACKAGES := qemu-system-x86 ovmf genisoimage openssh-client $(OVA_DEB_PACKAGES)

vm-deps:
	@$(call apt_install_missing,$(VM_DEB_PACKAGES),--no-install-recommends)

vm-test: venv vm-deps vcsim-deps
	FIRSTTRUST_VM_TESTS=1 $(PY) -m pytest tests/vm -v -rA -s $(PYTEST_ARGS); $(PYTEST_CHECK)

# The three Debian packages (python3-firsttrust, firsttrust-requester, firsttrust-agent) under
# build/, checked by lintian (any E: or W: line fails). packaging/README.md says more.
deb:
	@$(call apt_install_missing,$(DEB_BUILD_PACKAGES) lintian)
	packaging/deb/build.sh --lintian

# The sdist and the wheel under build/dist/ (the wheel is built from the sdist).
dist: venv
	$(PY) -m build --no-isolation --outdir build/dist .

# Benchmarks: ratios against the crypto floor measured in the same run (bench/README.md).
bench: venv
	$(PY) bench/run.py

# pytest's exit 5 means it collected no test: a failure, said so.
PYTEST_CHECK = rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; fi; exit $$rc

test: venv vcsim-deps ova-package-deps
	$(PY) -m pytest $(PYTEST_ARGS); $(PYTEST_CHECK)

# Break each security check in tests/mutation/mutants.toml, one at a time, in a scratch copy of
# the tree, and require its tests to fail (only a failure of a test that passes on an unmutated copy
# counts); prints `mutants killed N/N`. 90 rows on 2 cores shared with other work: 290 s at load 3.5,
# 397 s (84 rows) at load 5.
mutation-check: venv
	$(PY) tests/mutation/run.py $(MUTATION_ARGS)

# The agent must run on Debian 12's own packages: the same suite against those exact versions.
DEB12_VENV := .venv-debian12
# pyvmomi 6.7.1 as Debian 12's python3-pyvmomi: the requester's deployer (and the lab, which deploys
# through it) runs on that API subset, so the deploy tests here prove the apt install path; the agent
# never imports it.
DEB12_PINS := aiohttp==3.8.4 cryptography==38.0.4 srp==1.0.20 defusedxml==0.7.1 systemd-python==235 tqdm==4.64.1 \
              pyvmomi==6.7.1 psycopg==3.1.7 pytest pytest-asyncio hypothesis pyflakes==2.5.0 build 'setuptools>=77'

# Two directories are left to `make test`, which CI runs first: tests/packaging builds and installs
# the .debs and the wheel with dpkg, lintian and Debian's own python3 packages, whatever this venv
# holds; tests/fault kills both sides at each fsync, rename and send our code makes (strace finds
# them; ~3 min, a fifth of the suite), an order the library versions here do not change.
DEB12_NOT_AGAIN := --ignore=tests/packaging --ignore=tests/fault

test-debian-versions: system-deps $(DEB12_VENV)/.installed
	$(DEB12_VENV)/bin/python -m pytest -p no:cacheprovider $(DEB12_NOT_AGAIN) $(PYTEST_ARGS); $(PYTEST_CHECK)

# firsttrust itself goes in editable and without dependencies, so the pins above are what it runs on.
$(DEB12_VENV)/.installed: Makefile pyproject.toml
	test -x $(DEB12_VENV)/bin/python || $(PYTHON) -m venv $(DEB12_VENV)
	$(DEB12_VENV)/bin/python -m pip install -q $(DEB12_PINS)
	$(DEB12_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

# $(call apt_install_missing,PACKAGES,EXTRA APT OPTIONS): install those not installed yet, and only those.
apt_install_missing = missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) $$missing; \
	fi

system-deps:
	@$(call apt_install_missing,$(DEB_PACKAGES))

vcsim-deps:
	@$(call apt_install_missing,$(VCSIM_DEB_PACKAGES),--no-install-recommends)

# tests/integration/test_ova_import.py packages a small disk with packaging/ova/package.sh.
ova-package-deps:
	@$(call apt_install_missing,qemu-utils,--no-install-recommends)

venv: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,agent,vsphere,fleet]'
	touch $@

clean:
	rm -rf $(VENV) $(DEB12_VENV) build .pytest_cache
