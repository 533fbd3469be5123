# cardbridge — one entry point for setting up, testing, demonstrating, benchmarking, installing.
#
#   make setup   Debian packages (as root, only the missing ones), .venv with the project,
#                the virtual sound card plugin.  Idempotent.
#   make test    setup + the whole test suite
#   make demo    setup + the service on its embedded default (virtual cards, private JACK and bus)
#   make bench   setup + the per-direction matrix against zita-a2j/j2a and alsa_in/alsa_out,
#                control-plane and hotplug figures (~40 min); BENCH_ARGS=--quick: ~5 min
#   make bench-scale  setup + 8 and 16 duplex bridges of cardbridge and zita at 48 kHz / 128
#   make install / make uninstall   the service for real (see "Installation" below)
#   make deb     the Debian package, in build/deb/

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
BUILD := build
VCARD_SO := $(BUILD)/alsa-lib/libasound_module_pcm_cbvcard.so
VCARD_SRC := tests/testbench/vcard.c
VCARD_HDR := tests/testbench/vcard_clock.h
# the benchmarks' measuring tools (a C JACK client, the card's playback tap): built, never installed
BENCH_TOOLS := $(BUILD)/bench/cbmeter $(BUILD)/bench/cbtap

# what `make install`, `make deb` and their tests need: the distribution's Python with venv and
# headers, the package tools, lintian, pipx, man (the man pages are checked), and what the
# package depends on, so that installing it needs no download
INSTALL_APT_PACKAGES := python3 python3-dev build-essential debhelper dpkg-dev lintian pipx \
	man-db groff-base dbus libasound2 libjack-jackd2-0 libudev1
APT_PACKAGES := gcc make pkg-config python3-venv \
	jackd2 libjack-jackd2-dev libasound2-dev libasound2-plugins alsa-utils \
	dbus-daemon dbus-bin systemd zita-ajbridge qjackctl pulseaudio \
	tmux iproute2 util-linux procps \
	$(INSTALL_APT_PACKAGES)

.PHONY: setup apt venv vcard bench-tools test demo bench bench-scale man completions clean \
	install install-app install-files install-dirs uninstall uninstall-app uninstall-files prune \
	reload-managers deb

setup: apt venv vcard bench-tools man completions

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (run 'sudo make setup' once)" >&2; exit 1; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml setup.py service/cardbridge/engine/rtcore_build.py $(wildcard service/cardbridge/engine/csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel cffi
	$(PIP) install -q -e '.[test,bench]'
	touch $@

venv: $(VENV)/.installed

$(VCARD_SO): $(VCARD_SRC) $(VCARD_HDR)
	mkdir -p $(dir $@)
	gcc -O2 -g -Wall -Wextra -fPIC -DPIC -shared -o $@ $< -lasound -lm -lrt -lpthread

vcard: $(VCARD_SO)

$(BUILD)/bench/cbmeter: tests/testbench/cbmeter.c tests/testbench/benchio.h
	mkdir -p $(dir $@)
	gcc -O2 -g -Wall -Wextra -o $@ $< -ljack -lm -lpthread

$(BUILD)/bench/cbtap: tests/testbench/cbtap.c tests/testbench/benchio.h $(VCARD_HDR)
	mkdir -p $(dir $@)
	gcc -O2 -g -Wall -Wextra -o $@ $< -lm

bench-tools: $(BENCH_TOOLS)

man: venv
	@mkdir -p $(BUILD)/man
	$(PY) -m cardbridge_cli.docs man > $(BUILD)/man/cardbridge.1

completions: venv
	@mkdir -p $(BUILD)/completions
	$(PY) -m cardbridge_cli.docs bash > $(BUILD)/completions/cardbridge.bash
	$(PY) -m cardbridge_cli.docs zsh > $(BUILD)/completions/_cardbridge

test: setup
	$(PY) -m pytest -q -ra --timeout 600

demo: setup
	PYTHONPATH=tests $(PY) -m testbench.demo

bench: setup
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# alsa_in is left out: alsa_out exits after its first underrun on the virtual cards
bench-scale: setup
	$(PY) benchmarks/run.py --only scale --kinds cardbridge,zita $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) $(VENV) *.egg-info service/*.egg-info

# -- Installation -------------------------------------------------------------------------------
# `make install`: the service and its client in a private virtual environment ($(APPDIR), built
# with Debian's python3 and the Python packages from pyproject.toml, without the test and bench
# extras), the commands in $(BINDIR), units, D-Bus files, man pages, completions.
#   as root:   PREFIX=/usr/local, and the system-bus parts too (system unit, bus policy,
#              sysusers.d/tmpfiles.d entries, /etc/cardbridge/config.toml); the user is created
#   as a user: PREFIX=~/.local, the session parts only (SYSTEM=no)
# DESTDIR stages the same files elsewhere (debian/rules: DESTDIR=debian/cardbridge PREFIX=/usr).
# `make install-files` installs all but the program, for a cardbridged installed another way
# (`pipx install .` puts it in ~/.local/bin, the default BINDIR of a user's install).
# `make uninstall` (same variables) removes what install put there; like `apt remove` it keeps
# /var/lib/cardbridge, a changed /etc/cardbridge/config.toml and the user.
ifeq ($(shell id -u),0)
PREFIX ?= /usr/local
else
PREFIX ?= $(HOME)/.local
endif
SYSTEM ?= $(if $(filter $(HOME) $(HOME)/%,$(PREFIX)),no,yes)
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
APPDIR ?= $(LIBDIR)/cardbridge
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
DOCDIR ?= $(DATADIR)/doc/cardbridge
SYSCONFDIR ?= /etc
BASHCOMPLETIONDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPLETIONDIR ?= $(DATADIR)/zsh/site-functions
DBUSSESSIONSERVICEDIR ?= $(DATADIR)/dbus-1/services
DBUSSYSTEMSERVICEDIR ?= $(DATADIR)/dbus-1/system-services
# dbus-daemon reads policies from /usr/share/dbus-1/system.d and /etc/dbus-1/system.d only
DBUSPOLICYDIR ?= $(if $(filter /usr,$(PREFIX)),$(DATADIR)/dbus-1/system.d,$(SYSCONFDIR)/dbus-1/system.d)
# a user's systemd reads ~/.local/share/systemd/user, not ~/.local/lib/systemd/user
SYSTEMDUSERUNITDIR ?= $(if $(filter yes,$(SYSTEM)),$(LIBDIR)/systemd/user,$(DATADIR)/systemd/user)
SYSTEMDSYSTEMUNITDIR ?= $(LIBDIR)/systemd/system
SYSUSERSDIR ?= $(LIBDIR)/sysusers.d
TMPFILESDIR ?= $(LIBDIR)/tmpfiles.d
# the interpreter of the private environment: the distribution's, never a developer's pyenv
INSTALL_PYTHON ?= /usr/bin/python3
# the Python that writes cardbridge(1) and the completions: the installed program's own
DOCS_PYTHON ?= $(if $(wildcard $(DESTDIR)$(APPDIR)/bin/python),$(DESTDIR)$(APPDIR)/bin/python,$(shell sed -n '1s/^#!//p' $(BINDIR)/cardbridge 2>/dev/null))
PIP_INSTALL_FLAGS ?=
# pip's cache for these builds alone: a wheel pip built here (pyalsaaudio has none on PyPI) is
# built by INSTALL_PYTHON, never taken from a cache that a developer's other Python filled
INSTALL_PIP_CACHE ?= $(HOME)/.cache/cardbridge-install/pip

D := $(DESTDIR)
COMMANDS := cardbridged cardbridge
# installed file <- source; .in sources get @BINDIR@ replaced
SESSION_FILES := \
	$(SYSTEMDUSERUNITDIR)/cardbridge.service:systemd/cardbridge.service.in \
	$(DBUSSESSIONSERVICEDIR)/org.cardbridge.CardBridge1.service:dbus/services/org.cardbridge.CardBridge1.service.in \
	$(MANDIR)/man8/cardbridged.8:docs/cardbridged.8 \
	$(MANDIR)/man5/cardbridge.toml.5:docs/cardbridge.toml.5 \
	$(DOCDIR)/README.md:README.md
SYSTEM_FILES := \
	$(SYSTEMDSYSTEMUNITDIR)/cardbridged.service:systemd/cardbridged.service.in \
	$(DBUSSYSTEMSERVICEDIR)/org.cardbridge.CardBridge1.service:dbus/system-services/org.cardbridge.CardBridge1.service.in \
	$(DBUSPOLICYDIR)/org.cardbridge.CardBridge1.conf:dbus/org.cardbridge.CardBridge1.conf \
	$(SYSUSERSDIR)/cardbridge.conf:systemd/cardbridge.sysusers \
	$(TMPFILESDIR)/cardbridge.conf:systemd/cardbridge.tmpfiles
FILES := $(SESSION_FILES) $(if $(filter yes,$(SYSTEM)),$(SYSTEM_FILES))
# written by the installed program's docs module (cardbridge_cli.docs)
GENERATED := $(MANDIR)/man1/cardbridge.1:man $(BASHCOMPLETIONDIR)/cardbridge:bash \
	$(ZSHCOMPLETIONDIR)/_cardbridge:zsh
CONFIG := $(SYSCONFDIR)/cardbridge/config.toml
HERE_IS_LIVE := $(if $(D),,$(filter 0,$(shell id -u)))

install: install-app
	@$(MAKE) --no-print-directory install-files

# where `make install` would put things, with these variables
install-dirs:
	@$(foreach v,PREFIX SYSTEM BINDIR APPDIR MANDIR DOCDIR SYSCONFDIR BASHCOMPLETIONDIR \
	  ZSHCOMPLETIONDIR DBUSSESSIONSERVICEDIR DBUSSYSTEMSERVICEDIR DBUSPOLICYDIR \
	  SYSTEMDUSERUNITDIR SYSTEMDSYSTEMUNITDIR SYSUSERSDIR TMPFILESDIR,echo "$(v)=$($(v))";)

install-app:
	@test -x $(INSTALL_PYTHON) || { echo "$(INSTALL_PYTHON) not found (apt install python3-venv)" >&2; exit 1; }
	rm -rf $(D)$(APPDIR) $(BUILD)/lib.* $(BUILD)/bdist.* $(BUILD)/temp.*
	$$(readlink -f $(INSTALL_PYTHON)) -m venv $(D)$(APPDIR)
	$(D)$(APPDIR)/bin/python -m pip install -q --no-compile --disable-pip-version-check \
	  --no-warn-script-location --use-pep517 --cache-dir $(INSTALL_PIP_CACHE) $(PIP_INSTALL_FLAGS) .
	$(D)$(APPDIR)/bin/python -m pip uninstall -q -y pip setuptools
	rm -f $(D)$(APPDIR)/bin/activate* $(D)$(APPDIR)/bin/Activate.ps1
	rm -rf $(D)$(APPDIR)/include
	rm -f $(D)$(APPDIR)/lib/python3*/site-packages/cardbridge-*.dist-info/direct_url.json
	sed -i '/direct_url.json/d' $(D)$(APPDIR)/lib/python3*/site-packages/cardbridge-*.dist-info/RECORD
	@# the environment was built in $(D)$(APPDIR) and will run from $(APPDIR)
	@if [ -n "$(D)" ]; then \
	  find $(D)$(APPDIR)/bin -maxdepth 1 -type f -exec sed -i '1s|^#!$(D)/|#!/|' {} + ; \
	  sed -i 's|$(D)/|/|g' $(D)$(APPDIR)/pyvenv.cfg; \
	  if grep -rlIF '$(D)/' $(D)$(APPDIR); then echo "files above still name $(D)" >&2; exit 1; fi; \
	else \
	  $(APPDIR)/bin/python -m compileall -q $(APPDIR)/lib; \
	fi
	install -d $(D)$(BINDIR)
	for c in $(COMMANDS); do ln -sfn $(APPDIR)/bin/$$c $(D)$(BINDIR)/$$c; done

install-files:
	@test -n "$(DOCS_PYTHON)" || { echo "no installed cardbridge in $(BINDIR) (set BINDIR=)" >&2; exit 1; }
	@for pair in $(FILES); do \
	  dest=$(D)$${pair%%:*}; src=$${pair#*:}; \
	  install -d $$(dirname $$dest); \
	  sed 's|@BINDIR@|$(BINDIR)|g' $$src > $$dest.tmp && chmod 644 $$dest.tmp && mv $$dest.tmp $$dest; \
	  echo "installed $$dest"; \
	done
	@for pair in $(GENERATED); do \
	  dest=$(D)$${pair%%:*}; install -d $$(dirname $$dest); \
	  $(DOCS_PYTHON) -I -B -m cardbridge_cli.docs $${pair#*:} > $$dest.tmp && chmod 644 $$dest.tmp && mv $$dest.tmp $$dest; \
	  echo "installed $$dest"; \
	done
	@if [ "$(SYSTEM)" = yes ] && [ ! -e $(D)$(CONFIG) ]; then \
	  install -Dm644 docs/config.toml $(D)$(CONFIG) && echo "installed $(D)$(CONFIG)"; fi
	@if [ -n "$(HERE_IS_LIVE)" ] && [ "$(SYSTEM)" = yes ]; then \
	  systemd-sysusers $(SYSUSERSDIR)/cardbridge.conf; \
	  systemd-tmpfiles --create $(TMPFILESDIR)/cardbridge.conf; \
	fi
	@$(MAKE) --no-print-directory reload-managers

uninstall: uninstall-files
	@$(MAKE) --no-print-directory uninstall-app

uninstall-app:
	for c in $(COMMANDS); do \
	  if [ "$$(readlink $(D)$(BINDIR)/$$c)" = $(APPDIR)/bin/$$c ]; then rm -f $(D)$(BINDIR)/$$c; fi; \
	done
	rm -rf $(D)$(APPDIR)
	@$(MAKE) --no-print-directory prune DIRS="$(D)$(BINDIR) $(D)$(LIBDIR)"

uninstall-files:
	@for pair in $(FILES) $(GENERATED); do rm -fv $(D)$${pair%%:*}; done
	@if [ "$(SYSTEM)" = yes ] && [ -e $(D)$(CONFIG) ]; then \
	  if cmp -s docs/config.toml $(D)$(CONFIG); then rm -fv $(D)$(CONFIG); \
	  else echo "kept $(D)$(CONFIG): it was changed"; fi; \
	  rmdir --ignore-fail-on-non-empty $(D)$(SYSCONFDIR)/cardbridge; \
	fi
	rm -rf $(D)$(DOCDIR)
	@$(MAKE) --no-print-directory prune DIRS="$(D)$(DOCDIR) $(D)$(SYSCONFDIR)/cardbridge \
	  $(foreach pair,$(FILES) $(GENERATED),$(dir $(D)$(firstword $(subst :, ,$(pair)))))"
	@$(MAKE) --no-print-directory reload-managers

# with DESTDIR: remove the directories the files were in while they are empty, up to DESTDIR
prune:
	@if [ -n "$(D)" ]; then for d in $(DIRS); do \
	  d=$${d%/}; while [ "$$d" != "$(D)" ] && [ "$${d#$(D)/}" != "$$d" ]; do \
	    if [ -d "$$d" ]; then rmdir "$$d" 2>/dev/null || break; fi; d=$$(dirname "$$d"); done; \
	done; fi

# tell a running systemd and dbus-daemon about new or removed files (nothing to do with DESTDIR)
reload-managers:
	@if [ -z "$(D)" ] && [ "$(SYSTEM)" = yes ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
	@if [ -z "$(D)" ] && [ "$(SYSTEM)" = yes ] && [ -S /run/dbus/system_bus_socket ]; then \
	  dbus-send --system --type=method_call --dest=org.freedesktop.DBus / org.freedesktop.DBus.ReloadConfig || true; fi
	@if [ -z "$(D)" ] && [ "$(SYSTEM)" = no ]; then systemctl --user daemon-reload 2>/dev/null || true; fi

# -- Debian package -----------------------------------------------------------------------------
# `make deb`: dpkg-buildpackage on a copy of the source tree (the files git knows and the new
# ones it does not ignore), so nothing lands beside the checkout; the .deb, .buildinfo,
# .changes and lintian's report end up in $(DEBDIR). lintian (when installed) fails the build on
# errors. The build needs the package's Build-Depends (`sudo apt build-dep ./`) and PyPI.
DEBDIR ?= $(BUILD)/deb
deb:
	rm -rf $(DEBDIR) && mkdir -p $(DEBDIR)/src
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - ; \
	else \
	  tar --exclude=./.git --exclude=./$(BUILD) --exclude=./$(VENV) -cf - . ; \
	fi | tar -xf - -C $(DEBDIR)/src
	cd $(DEBDIR)/src && dpkg-buildpackage -b -us -uc
	rm -rf $(DEBDIR)/src
	@# the report shows the overridden tags too; an error fails the build (--fail-on would count
	@# overridden errors once they are shown)
	@if ! command -v lintian >/dev/null; then echo "lintian is not installed: the package is not checked"; exit 0; fi; \
	set -o pipefail; lintian --fail-on none --info --display-info --pedantic --show-overrides \
	  $(DEBDIR)/*.changes | tee $(DEBDIR)/lintian.txt; \
	if grep -q '^E: ' $(DEBDIR)/lintian.txt; then echo "lintian: errors, see $(DEBDIR)/lintian.txt" >&2; exit 1; fi
