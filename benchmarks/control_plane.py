"""Control-plane latency of cardbridged: D-Bus calls answered while bridges stream.

Runs as its own process (`.venv/bin/python benchmarks/control_plane.py [--seconds S] [--rate R]
[--bridges N]`, prints JSON), or `measure()` is called from benchmarks/run.py. jackd (dummy,
48 kHz / 256), a private session bus and the daemon (`--no-hotplug`, devices declared in its
config, virtual cards from testbench.vcard) are child processes.

Once every bridge runs: 5 calls/s for 5 s (baseline), then `rate` calls/s for `seconds`, paced
(one call every 1/rate s, not waiting for the previous one) from one asyncio dbus-next client,
rotating ListDevices, Properties.GetAll(Bridge), Properties.Get(State) over the bridges. The
bridges' Xruns and the JACK server's xruns (a passive JACK client) are counted over the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
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
from testbench.busdaemon import PrivateBus  # noqa: E402
from testbench.jackserver import JackServer  # noqa: E402
from testbench.servicerun import (BIFACE, BUS, MGR, MIFACE, daemon,  # noqa: E402
                                  get_prop, wait_for)
from testbench.vcard import VirtualCard, create_card, write_alsa_config  # noqa: E402

PROPS = "org.freedesktop.DBus.Properties"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted `values`, rounded to µs."""
    return round(values[int(round(q * (len(values) - 1)))], 3) if values else None


def make_call(i: int, paths: list[str]):
    """The i-th call of the mix: ListDevices, GetAll(bridge), Get(bridge, State), in turn."""
    from dbus_next import Message
    path = paths[(i // 3) % len(paths)]
    kind = i % 3
    if kind == 0:
        return Message(destination=BUS, path=MGR, interface=MIFACE, member="ListDevices")
    if kind == 1:
        return Message(destination=BUS, path=path, interface=PROPS, member="GetAll",
                       signature="s", body=[BIFACE])
    return Message(destination=BUS, path=path, interface=PROPS, member="Get", signature="ss",
                   body=[BIFACE, "State"])


async def paced_calls(address: str, paths: list[str], seconds: float, rate: float) -> dict:
    """Issue calls at `rate`/s for `seconds` from one connection; latency of each."""
    from dbus_next import MessageType
    from dbus_next.aio import MessageBus
    bus = await MessageBus(bus_address=address).connect()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0

    async def one(msg) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            reply = await asyncio.wait_for(bus.call(msg), 10.0)
        except Exception:          # timeout or connection trouble: an error, no latency
            errors += 1
            return
        if reply.message_type == MessageType.ERROR:
            errors += 1
        else:
            latencies.append((time.perf_counter() - t0) * 1000.0)

    n = max(1, int(seconds * rate))
    tasks = []
    start = loop.time()
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(make_call(i, paths))))
    last = loop.time()
    await asyncio.gather(*tasks)
    bus.disconnect()
    lat = sorted(latencies)
    return {"calls": n, "rate_per_s": round((n - 1) / (last - start), 3) if n > 1 else 0.0,
            "p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99),
            "max_ms": percentile(lat, 1.0), "errors": errors}


def xrun_counter(server: str):
    """A passive JACK client counting the server's xruns in `client.xruns` (None if no JACK)."""
    try:
        import jack
        client = jack.Client("cb-cp-xruns", no_start_server=True, servername=server)
    except Exception:
        return None
    client.xruns = 0
    client.set_xrun_callback(lambda delay: setattr(client, "xruns", client.xruns + 1))
    client.activate()
    return client


def measure(seconds: float = 20.0, rate: float = 200.0, bridges: int = 2) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cardbridge-bench-cp-"))
    cards = [VirtualCard(f"vcp{i}", ppm=(60.0 + 35.0 * i) * (-1) ** i) for i in range(bridges)]
    alsa = write_alsa_config(cards, work / "alsa" / "asound.conf")
    controls = [create_card(card) for card in cards]
    server = JackServer(rate=48000, period=256, log_path=work / "jackd.log")
    bus = PrivateBus("session")
    jack_client = None
    try:
        server.start()
        bus.start()
        env = bus.env(server.env(), ALSA_CONFIG_PATH=alsa, HOME=str(work))
        config = 'auto_attach = "none"\n' + "".join(
            f'[devices.{c.name}]\npcm = "{c.name}"\n' for c in cards)
        with daemon(work, env, server.name, "--no-hotplug", config=config) as address:
            paths = []
            for card in cards:
                subprocess.run(["busctl", f"--address={address}", "call", BUS, MGR, MIFACE,
                                "Attach", "sa{sv}", card.name, "0"], check=True,
                               capture_output=True, timeout=20)
                paths.append(names.bridge_path(card.name))
            for path in paths:
                wait_for(lambda p=path: get_prop(address, p, "State") == "running", 60,
                         f"{path} running")
            xrun_count = lambda: sum(get_prop(address, p, "Xruns") or 0 for p in paths)  # noqa
            idle = asyncio.run(paced_calls(address, paths, 5.0, 5.0))
            jack_client = xrun_counter(server.name)
            jack_xruns = lambda: jack_client.xruns if jack_client else 0  # noqa: E731
            before, jack_before = xrun_count(), jack_xruns()
            flood = asyncio.run(paced_calls(address, paths, seconds, rate))
            after, jack_after = xrun_count(), jack_xruns()
            running = sum(get_prop(address, p, "State") == "running" for p in paths)
    finally:
        if jack_client is not None:
            jack_client.deactivate()
            jack_client.close()
        server.stop()
        bus.stop()
        for control in controls:
            control.close()
        shutil.rmtree(work, ignore_errors=True)
    return {**flood, "idle_p50_ms": idle["p50_ms"], "idle_errors": idle["errors"],
            "bridge_xruns_during": after - before,
            "jack_xruns_during": jack_after - jack_before if jack_client else None,
            "bridges_running_after": running, "bridges": bridges, "seconds": seconds,
            "target_rate_per_s": rate}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--bridges", type=int, default=2)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.seconds, args.rate, args.bridges), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
