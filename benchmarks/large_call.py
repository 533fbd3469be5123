"""How long one huge D-Bus call keeps cardbridged from answering anybody else.

Runs as its own process (`.venv/bin/python benchmarks/large_call.py [--mib N] [--seconds S]`,
prints JSON). A private session bus and the daemon (no JACK server, no hotplug: only its D-Bus
side matters here) are child processes. A prober asks `Properties.Get(Version)` every 20 ms and
records each answer's latency; meanwhile a second connection sends one
`org.freedesktop.DBus.Introspectable.Introspect` call — a member everyone may call on any bus —
whose body is an `av` of N MiB of one-byte variants (the bus delivers it: the signature is wrong,
but only the receiver decides that). Reported: the prober's latencies before and during, the
longest gap, the time until the service answers the huge call (if it does), and the CPU time
the service and dbus-daemon spent meanwhile (the bus daemon checks every message it forwards:
its share of the delay is not the service's).

The huge message is written by hand (header from the library, body packed with struct): the
library's own marshaller would take minutes in the sender.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "tests"))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))

from cardbridge import names  # noqa: E402
from testbench.busdaemon import PrivateBus  # noqa: E402
from testbench.servicerun import daemon  # noqa: E402

BUS_LIMIT = 32 * 1024 * 1024 - 4096     # a little under dbus-daemon's default 32 MiB limit


def huge_introspect(mib: float, serial: int) -> bytes:
    """An Introspect call to the service whose body is an `av` of about `mib` MiB."""
    from dbus_next import Message
    head = Message(destination=names.BUS_NAME, path=names.MANAGER_PATH,
                   interface="org.freedesktop.DBus.Introspectable", member="Introspect",
                   signature="av", body=[[]], serial=serial)._marshall()
    header = bytearray(head[:-4])                  # the empty body is one array length
    count = min(int(mib * 1024 * 1024), BUS_LIMIT - len(header)) // 4
    body = struct.pack("<I", count * 4) + b"\x01y\x00\x07" * count
    struct.pack_into("<I", header, 4, len(body))
    return bytes(header) + body


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(address: str, bus_pid: int, mib: float, seconds: float) -> dict:
    from dbus_next import Message, MessageType
    from dbus_next.aio import MessageBus
    prober = await MessageBus(bus_address=address).connect()
    sender = await MessageBus(bus_address=address).connect()
    get = dict(destination=names.BUS_NAME, path=names.MANAGER_PATH,
               interface="org.freedesktop.DBus.Properties", member="Get", signature="ss",
               body=[names.MANAGER_IFACE, "Version"])
    latencies: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def probe():
        while not stop.is_set():
            t0 = time.monotonic()
            reply = await prober.call(Message(**get))
            assert reply.message_type == MessageType.METHOD_RETURN, reply.body
            latencies.append((t0, (time.monotonic() - t0) * 1000.0))
            await asyncio.sleep(0.02)

    reply = await prober.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                      interface="org.freedesktop.DBus",
                                      member="GetConnectionUnixProcessID", signature="s",
                                      body=[names.BUS_NAME]))
    service_pid = reply.body[0]
    task = asyncio.create_task(probe())
    await asyncio.sleep(1.0)
    cpu_before = cpu_seconds(service_pid), cpu_seconds(bus_pid)
    serial = sender.next_serial()
    raw = huge_introspect(mib, serial)
    answered = asyncio.get_running_loop().create_future()

    def on_reply(msg):
        if msg.reply_serial == serial and not answered.done():
            answered.set_result((time.monotonic(), msg.message_type.name, msg.error_name))
        return None

    sender.add_message_handler(on_reply)
    sent_at = time.monotonic()
    sending = asyncio.create_task(asyncio.get_running_loop().sock_sendall(sender._sock, raw))
    try:
        answer = await asyncio.wait_for(answered, seconds)
    except asyncio.TimeoutError:
        answer = None
    await asyncio.sleep(1.0)
    sending.cancel()
    stop.set()
    try:
        await asyncio.wait_for(task, 120)
    except asyncio.TimeoutError:
        latencies.append((time.monotonic(), float("inf")))
    cpu_after = cpu_seconds(service_pid), cpu_seconds(bus_pid)
    before = [ms for t, ms in latencies if t < sent_at]
    during = [ms for t, ms in latencies if t >= sent_at]
    prober.disconnect()
    sender.disconnect()
    return {
        "message_mib": round(len(raw) / 1048576, 2),
        "probe_ms_before_max": round(max(before), 1) if before else None,
        "probe_ms_during_max": round(max(during), 1) if during else None,
        "probe_ms_during_median": round(sorted(during)[len(during) // 2], 1) if during else None,
        "probes_during": len(during),
        "service_cpu_s": round(cpu_after[0] - cpu_before[0], 2),
        "dbus_daemon_cpu_s": round(cpu_after[1] - cpu_before[1], 2),
        "huge_call_answered_after_s": round(answer[0] - sent_at, 2) if answer else None,
        "huge_call_answer": f"{answer[1]} {answer[2] or ''}".strip() if answer else "none",
    }


def main() -> int:
    import faulthandler
    faulthandler.dump_traceback_later(float(os.environ.get("LARGE_CALL_DUMP", "1e9")), exit=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=32.0, help="size of the huge call's body")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to wait for it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cardbridge-large-call-"))
    with PrivateBus("session") as bus:
        env = bus.env(HOME=str(work))
        with daemon(work, env, f"cb-none-{os.getpid()}", "--no-hotplug") as address:
            result = asyncio.run(measure(address, bus.pid, args.mib, args.seconds))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
