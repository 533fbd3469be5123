"""Hotplug latency of cardbridged: udev event → JACK ports, unplug → waiting, replug → running.

Runs as its own process (`.venv/bin/python benchmarks/hotplug_latency.py [--repeats N]`, as
root: it needs a network namespace; prints JSON), or `measure()` is called from the benchmark
process (benchmarks/run.py). Real libudev-format netlink events (testbench.udevinject)
are sent inside a private network namespace where the daemon runs (nsenter); jackd (dummy,
48 kHz / 256) and the private session bus run outside it, reachable through socket files.
Card 3 is a Scarlett 2i2 as udev describes it; ALSA's `hw:CARD=3` opens a virtual card whose
clock file is card3.vcard, so unplugging is: the PCM vanishes, then udev says so.

Measured: first plug → the bridge's capture_1 port in `jack_lsp`; then `repeats` times:
unplug → State "waiting-for-device", replug → the user's connection (system:capture_1 →
<client>:playback_1) present again, and → State "running". The bridge keeps its JACK ports
while the card is away, so the connection may never go (`connection_kept_while_away` counts the
repeats where it was still there); then its time is just that of the first poll. Polls every
10 ms; each poll runs jack_lsp or busctl, whose own run time (a few ms) bounds the resolution.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "tests"))      # the test bench (virtual cards, JACK, buses)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))

from cardbridge import names  # noqa: E402
from cardbridge.devices import device_from_udev  # noqa: E402
from testbench.busdaemon import PrivateBus  # noqa: E402
from testbench.jackserver import JackServer  # noqa: E402
from testbench.udevinject import CARDS, NetNamespace, UdevInjector  # noqa: E402
from testbench.servicerun import daemon, get_prop  # noqa: E402
from testbench.servicerun import wait_for as _wait_for  # noqa: E402
from testbench.vcard import VirtualCard, create_card, hw_override_config  # noqa: E402


def wait_for(fn, timeout: float, what: str) -> float:
    """Poll every 10 ms (the resolution of the figures below)."""
    return _wait_for(fn, timeout, what, POLL)

CARD = 3
POLL = 0.01


def jack_ports(server: str) -> list[str]:
    return subprocess.run(["jack_lsp", "-s", server], capture_output=True, text=True,
                          timeout=10).stdout.split("\n")


def connected(server: str, port: str, peer: str) -> bool:
    out = subprocess.run(["jack_lsp", "-s", server, "-c", port], capture_output=True, text=True,
                         timeout=10).stdout.splitlines()
    return any(line.strip() == peer for line in out[1:] if line.startswith((" ", "\t")))


def measure(repeats: int = 10) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cardbridge-bench-hotplug-"))
    model = CARDS["scarlett-2i2"]
    netns = NetNamespace()
    injector = None
    server = JackServer(rate=48000, period=256, log_path=work / "jackd.log")
    bus = PrivateBus("session")
    clock = create_card(VirtualCard(f"card{CARD}", shm=str(work / f"card{CARD}.vcard"), ppm=75.0))
    to_waiting, to_connection, to_running, kept = [], [], [], 0
    try:
        netns.start()
        injector = UdevInjector(netns)
        server.start()
        bus.start()
        env = bus.env(server.env(), ALSA_CONFIG_PATH=hw_override_config(work), HOME=str(work))
        with daemon(work, env, server.name, popen=netns.popen,
                    config='auto_attach = "usb"\n') as address:
            state = lambda: get_prop(address, path, "State")  # noqa: E731
            t0 = time.monotonic()
            sent = injector.plug(model, CARD)
            dev = device_from_udev(sent[-1])
            path = names.bridge_path(dev.id)
            first = wait_for(lambda: any(p.endswith(":capture_1") and not p.startswith("system:")
                                         for p in jack_ports(server.name)), 60,
                             "the bridge's ports") - t0
            wait_for(lambda: state() == "running", 60, "the bridge to run")
            client = get_prop(address, path, "ClientName")
            playback = f"{client}:playback_1"
            subprocess.run(["jack_connect", "-s", server.name, "system:capture_1", playback],
                           check=True, timeout=10)
            time.sleep(1.5)      # the service records the connection
            for i in range(repeats):
                clock.unplug()
                t0 = time.monotonic()
                injector.unplug(model, CARD)
                to_waiting.append(wait_for(lambda: state() == "waiting-for-device", 30,
                                           f"waiting-for-device ({i})") - t0)
                kept += connected(server.name, playback, "system:capture_1")
                clock.replug()
                t0 = time.monotonic()
                injector.plug(model, CARD)
                seen: dict[str, float] = {}
                deadline = t0 + 60
                while len(seen) < 2 and time.monotonic() < deadline:
                    if "conn" not in seen and connected(server.name, playback,
                                                        "system:capture_1"):
                        seen["conn"] = time.monotonic() - t0
                    if "run" not in seen and state() == "running":
                        seen["run"] = time.monotonic() - t0
                    time.sleep(POLL)
                if len(seen) < 2:
                    raise TimeoutError(f"replug {i}: only {sorted(seen)} within 60 s")
                to_connection.append(seen["conn"])
                to_running.append(seen["run"])
                time.sleep(1.0)    # let it stream a moment before the next unplug
            same_name = get_prop(address, path, "ClientName") == client
    finally:
        server.stop()
        bus.stop()
        if injector is not None:
            injector.close()
        netns.stop()
        clock.close()
        shutil.rmtree(work, ignore_errors=True)
    ms = [t * 1000.0 for t in to_waiting]
    return {"first_plug_to_ports_s": round(first, 3),
            "unplug_to_waiting_ms_median": round(statistics.median(ms), 1),
            "unplug_to_waiting_ms_max": round(max(ms), 1),
            "replug_to_connection_s_median": round(statistics.median(to_connection), 3),
            "replug_to_connection_s_max": round(max(to_connection), 3),
            "replug_to_running_s_median": round(statistics.median(to_running), 3),
            "replug_to_running_s_max": round(max(to_running), 3),
            "connection_kept_while_away": kept, "same_client_name": same_name,
            "repeats": repeats}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
