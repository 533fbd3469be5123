"""`cardbridged`: the service's main process (asyncio, one thread; bridges are child processes).

Connects to the session or system bus, owns org.cardbridge.CardBridge1, exports the Manager,
restores the persisted bridges, and stops everything cleanly on SIGTERM (state saved, JACK
clients closed) well within systemd's patience. SIGHUP re-reads the configuration.

Under systemd (Type=notify) it reports READY=1 once it serves, a status line with the bridges'
states while it runs and STOPPING=1 when it stops, and pings the watchdog from its event loop
(heartbeat.py). Losing the bus stops it with exit status 1 (so Restart=on-failure brings it
back), with one log line and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from . import __version__, heartbeat, logsetup, names
from .config import default_path
from .dbuslib import BusType, DBusError, NameFlag, RequestNameReply, ServiceBus
from .errors import CardBridgeError
from .manager import Manager
from .sdnotify import Notifier
from .store import default_state_dir

log = logging.getLogger("cardbridge")
STOP_BUDGET = 2.0
EXIT_OK = 0
EXIT_FAILURE = 1            # could not start, or lost the bus: systemd's Restart=on-failure
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The command line (cardbridged(8) documents each option; a test holds them together)."""
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
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def report_loop_error(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """asyncio's handler for errors nobody awaited: one log line, the traceback only at debug
    level. A bus connection's reader that ended with its bus (EOF, reset) is expected when a
    bus goes away and is logged at debug level only."""
    exc = context.get("exception")
    detail = f"{type(exc).__name__}: {exc}" if exc is not None else ""
    level = logging.DEBUG if isinstance(exc, (EOFError, ConnectionError)) else logging.WARNING
    log.log(level, "%s%s", context.get("message", "error in the event loop"),
            f" ({detail.rstrip(': ')})" if detail else "")
    if exc is not None:
        log.debug("traceback", exc_info=exc)


async def run(args, notifier: Notifier | None = None) -> int:
    notifier = notifier or Notifier()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(report_loop_error)
    bus_kind = "system" if args.system else "session"
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
        log.error("cannot connect to the %s bus: %s", bus_kind, exc)
        return EXIT_FAILURE
    from .api import Api  # after the bus: api imports the interfaces
    api = Api(bus, manager)
    if not system:
        manager.reserve_bus = bus       # ReserveDevice1 lives on the session bus
    try:
        reply = await bus.request_name(names.BUS_NAME, NameFlag.DO_NOT_QUEUE)
    except DBusError as exc:        # the bus policy does not let this user own the name
        log.error("cannot own %s on the %s bus: %s", names.BUS_NAME, bus_kind, exc.text)
        bus.disconnect()
        return EXIT_FAILURE
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        log.error("%s is already owned by another process", names.BUS_NAME)
        bus.disconnect()
        return EXIT_FAILURE
    try:
        await manager.start()
    except CardBridgeError as exc:
        log.error("%s", exc)
        await manager.stop()
        bus.disconnect()
        return EXIT_FAILURE

    def status() -> str:
        return heartbeat.status_line(manager.bridge_states(), manager.jack.running)

    first = status()
    notifier.send("READY=1", f"STATUS={first}")
    log.info("cardbridged %s ready on the %s bus", __version__, bus_kind)
    beating = asyncio.ensure_future(heartbeat.beat(notifier, status, first))
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
    lost = disconnected.done()
    if lost:
        reason = disconnected.exception()
        log.error("lost the connection to the %s bus%s; stopping", bus_kind,
                  f" ({type(reason).__name__})" if reason is not None else "")
    else:
        disconnected.cancel()
    stopping.cancel()
    beating.cancel()
    notifier.send("STOPPING=1", "STATUS=stopping")
    try:
        await asyncio.wait_for(manager.stop(), STOP_BUDGET)
    except asyncio.TimeoutError:
        log.warning("stopping took longer than %.0f s", STOP_BUDGET)
    del api
    bus.disconnect()
    return EXIT_FAILURE if lost else EXIT_OK


def main(argv=None) -> int:
    args = parse_args(argv)
    logsetup.setup(args.log_level)
    notifier = Notifier.from_environment()
    try:
        return asyncio.run(run(args, notifier))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
