"""The test bench: components to run cardbridge without sound hardware (virtual cards, private
JACK servers and D-Bus buses, udev events, a measuring JACK client, the daemon as a child).

Used by the test process, `make demo` and the benchmarks, from the source checkout only: it is
not part of the installed service (`tests/` is put on PYTHONPATH by conftest.py, the Makefile
and benchmarks/run.py).
"""
