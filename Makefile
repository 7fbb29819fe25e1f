# Every target sets itself up from nothing on Debian 12 as root: the Debian packages it needs
# (installed only when missing), then the virtualenv in .venv (rebuilt when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# What the tests need from Debian: a Python with venv, the OpenSSL runtime pysrp's fast backend
# loads (libssl3, not libssl-dev: firsttrust.srp6a finds libssl.so.3 itself), and the tools the
# agent drives (chpasswd from passwd).
# systemd-python builds from source: libsystemd-dev, pkg-config, a compiler and Python headers.
DEB_PACKAGES := python3 python3-venv python3-pip python3-dev libssl3 passwd ca-certificates \
                libsystemd-dev pkg-config gcc systemd

.PHONY: test system-deps venv clean

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,agent]'
	touch $@

clean:
	rm -rf $(VENV) build .pytest_cache
