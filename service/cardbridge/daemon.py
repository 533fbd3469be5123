"""`cardbridged`: the service's main process (asyncio, one thread; bridges are child processes).

Connects to the session or system bus, owns org.cardbridge.CardBridge1, exports the Manager,
restores the persisted bridges, and stops everything cleanly on SIGTERM (state saved, JACK
clients closed) well within systemd's patience. SIGHUP re-reads the configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from . import __version__, names
from .config import default_path
from .dbuslib import BusType, NameFlag, RequestNameReply, ServiceBus
from .errors import CardBridgeError
from .manager import Manager
from .sdnotify import notify
from .store import default_state_dir

log = logging.getLogger("cardbridge")
STOP_BUDGET = 2.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cardbridged", description=__doc__.splitlines()[0])
    bus = p.add_mutually_exclusive_group()
    bus.add_argument("--system", action="store_true", help="use the system bus")
    bus.add_argument("--session", action="store_true", help="use the session bus (default)")
    p.add_argument("--config", help="configuration file (TOML)")
    p.add_argument("--state-dir", help="where the state file lives")
    p.add_argument("--jack-server", help="JACK server to follow (default: $JACK_DEFAULT_SERVER or 'default')")
    p.add_argument("--jackdbus-bus", metavar="ADDRESS",
                   help="the session bus whose jackdbus to follow (with --system; default: "
                        "$CARDBRIDGE_SESSION_BUS_ADDRESS; with --session it is that bus)")
    p.add_argument("--no-hotplug", action="store_true", help="do not watch udev for cards")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--version", action="version", version=f"cardbridged {__version__}")
    return p.parse_args(argv)


async def run(args) -> int:
    system = bool(args.system)
    config = args.config or str(default_path(system))
    state_dir = args.state_dir or str(default_state_dir(system))
    jack_server = args.jack_server or os.environ.get("JACK_DEFAULT_SERVER") or None
    if system:
        session_address = args.jackdbus_bus or os.environ.get("CARDBRIDGE_SESSION_BUS_ADDRESS")
    else:
        session_address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    manager = Manager(config, state_dir, jack_server, hotplug=not args.no_hotplug,
                      session_bus_address=session_address)
    try:
        bus = await ServiceBus(bus_type=BusType.SYSTEM if system else BusType.SESSION,
                               object_manager_path=names.MANAGER_PATH).connect()
    except Exception as exc:
        log.error("cannot connect to the %s bus: %s", "system" if system else "session", exc)
        return 1
    from .api import Api  # after the bus: api imports the interfaces
    api = Api(bus, manager)
    if not system:
        manager.reserve_bus = bus       # ReserveDevice1 lives on the session bus
    reply = await bus.request_name(names.BUS_NAME, NameFlag.DO_NOT_QUEUE)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        log.error("%s is already owned by another process", names.BUS_NAME)
        bus.disconnect()
        return 1
    try:
        await manager.start()
    except CardBridgeError as exc:
        log.error("%s", exc)
        await manager.stop()
        bus.disconnect()
        return 1
    notify("READY=1\nSTATUS=running")
    log.info("cardbridged %s ready on the %s bus", __version__, "system" if system else "session")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload():
        async def go():
            try:
                await manager.reload()
            except CardBridgeError as exc:
                log.error("configuration not reloaded: %s", exc)
        asyncio.ensure_future(go())

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
    notify("STOPPING=1")
    try:
        await asyncio.wait_for(manager.stop(), STOP_BUDGET)
    except asyncio.TimeoutError:
        log.warning("stopping took longer than %.0f s", STOP_BUDGET)
    del api
    bus.disconnect()
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(name)s: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
