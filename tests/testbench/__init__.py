"""The test bench: components to run cardbridge without sound hardware (virtual cards, private
JACK servers and D-Bus buses, udev events, measuring JACK clients, the card's playback tap, the
daemon as a child).

Used by the test process, `make demo` and the benchmarks, from the source checkout only: it is
not part of the installed service (`tests/` is put on PYTHONPATH by conftest.py, the Makefile
and benchmarks/run.py). The C pieces (vcard.c, the ALSA plugin; cbmeter.c and cbtap.c, the
benchmarks' measuring tools) are built by the Makefile into build/, never installed.
"""
