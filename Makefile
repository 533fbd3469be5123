# cardbridge — one entry point for setting up, testing, demonstrating and benchmarking.
#
#   make setup   Debian packages (as root, only the missing ones), .venv with the project,
#                the virtual sound card plugin.  Idempotent.
#   make test    setup + the whole test suite
#   make demo    setup + the service on its embedded default (virtual cards, private JACK and bus)
#   make bench   setup + the per-direction matrix against zita-a2j/j2a and alsa_in/alsa_out,
#                control-plane and hotplug figures (~40 min); BENCH_ARGS=--quick: ~5 min
#   make bench-scale  setup + 8 and 16 duplex bridges of cardbridge and zita at 48 kHz / 128

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

APT_PACKAGES := gcc make pkg-config python3-venv \
	jackd2 libjack-jackd2-dev libasound2-dev libasound2-plugins alsa-utils \
	dbus-daemon dbus-bin systemd zita-ajbridge qjackctl pulseaudio \
	tmux iproute2 util-linux procps

.PHONY: setup apt venv vcard bench-tools test demo bench bench-scale man completions install-docs clean

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

# Installs the CLI's man page and shell completion for the current user (or system-wide as root
# with PREFIX=/usr/local).
PREFIX ?= $(HOME)/.local
install-docs: man completions
	install -Dm644 $(BUILD)/man/cardbridge.1 $(PREFIX)/share/man/man1/cardbridge.1
	install -Dm644 $(BUILD)/completions/cardbridge.bash $(PREFIX)/share/bash-completion/completions/cardbridge
	install -Dm644 $(BUILD)/completions/_cardbridge $(PREFIX)/share/zsh/site-functions/_cardbridge

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
