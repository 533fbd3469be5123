"""One coroutine per `cardbridge` command: ask the service, then print text or JSON.

Runs in the CLI process's asyncio loop. Each command returns an exit code or raises
failures.CliError; JSON documents follow schema.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from . import asoundrc, bus, failures, records, render
from .failures import CliError, shown


class Output:
    """Where a command's result goes: a JSON document or human text on stdout."""

    def __init__(self, json_mode: bool):
        self.json_mode = json_mode
        self.style = render.Style(render.colour_wanted(sys.stdout) and not json_mode)

    def result(self, document: dict, text: str) -> None:
        if self.json_mode:
            sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
        elif text:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()


def client_version() -> str:
    try:
        from importlib.metadata import version
        return version("cardbridge")
    except Exception:
        from cardbridge import __version__
        return __version__


async def status(service: bus.Service, args, out: Output) -> int:
    manager = await service.manager_properties()
    doc = records.status_document(manager, service.kind, await service.bridges())
    if args.bridge is None:
        out.result(doc, render.status_view(doc, out.style))
        return failures.OK
    record = records.find_bridge(doc["bridges"], args.bridge)
    if record is None:
        raise CliError(failures.NOT_FOUND, f"no bridge {shown(args.bridge)} (see 'cardbridge status')")
    doc["bridges"] = [record]
    out.result(doc, render.bridge_detail_view(record, out.style))
    if record["state"] != "running":
        raise CliError(failures.NOT_READY, f"{render.dash(record['client_name'])} is "
                       f"{render.dash(record['state'])}"
                       + (f": {record['state_reason']}" if record.get("state_reason") else ""))
    return failures.OK


async def devices(service: bus.Service, args, out: Output) -> int:
    found = [records.device_record(info) for info in await service.list_devices()]
    if args.ids and not out.json_mode:
        out.result({}, "\n".join(d["id"] for d in found))
    else:
        out.result({"devices": found}, render.devices_view(found, out.style))
    return failures.OK


ATTACH_OPTIONS = ("name", "capture", "playback", "rate", "period", "periods", "max_periods",
                  "quality")


async def attach(service: bus.Service, args, out: Output) -> int:
    options = {key: getattr(args, key) for key in ATTACH_OPTIONS if getattr(args, key) is not None}
    if not args.persist:
        options["persist"] = False
    path = await service.attach(args.device, options)
    try:
        props = await service.bridge_properties(path)
    except CliError:
        props = {"Device": args.device}           # gone again already; report what we know
    if args.wait:
        props = await wait_until_running(service, path, props, args.timeout)
    manager = await service.manager_properties()
    jack_rate = manager.get("JackSampleRate") if manager.get("JackRunning") else None
    record = records.bridge_record(path, props, jack_rate)
    text = (f"Attached {record['device'] or args.device} as JACK client "
            f"'{render.dash(record['client_name'])}' ({render.dash(record['state'])}): {path}")
    if args.wait and record["state"] != "running":
        reason = record.get("state_reason") or "no reason given"
        raise CliError(failures.NOT_READY, f"{render.dash(record['client_name'])} is "
                       f"{render.dash(record['state'])}: {reason}")
    out.result({"bridge": record}, text)
    return failures.OK


WAIT_POLL = 0.2          # s between looks at a bridge being waited for
WAIT_SETTLED = 2.0       # s a failed or waiting state must last to be the answer


async def wait_until_running(service: bus.Service, path: str, props: dict,
                             timeout: float) -> dict:
    """The bridge's properties once it runs, once it has failed or waited for WAIT_SETTLED
    seconds (JACK absent, card held elsewhere: a clear answer with a reason), or at the
    timeout; whichever comes first."""
    deadline = time.monotonic() + timeout
    since = None
    while True:
        state = props.get("State")
        if state == "running":
            return props
        if state == "failed" or (state or "").startswith("waiting-"):
            since = since if since is not None else time.monotonic()
            if time.monotonic() - since >= WAIT_SETTLED:
                return props
        else:
            since = None
        if time.monotonic() >= deadline:
            props = dict(props)
            props["StateReason"] = (f"still {state or 'unknown'} after {timeout} s"
                                    + (f" ({props.get('StateReason')})"
                                       if props.get("StateReason") else ""))
            return props
        await asyncio.sleep(WAIT_POLL)
        try:
            props = await service.bridge_properties(path)
        except CliError as exc:
            if exc.code == failures.NOT_FOUND:
                raise CliError(failures.NOT_READY, f"the bridge {path} went away") from None
            raise


async def detach(service: bus.Service, args, out: Output) -> int:
    bridges = [records.bridge_record(p, props) for p, props in (await service.bridges()).items()]
    record = records.find_bridge(bridges, args.target)
    if record is not None and record["device"]:
        await service.detach(record["device"])
        detached = {"device": record["device"], "path": record["path"]}
        text = f"Detached {render.dash(record['client_name'])} ({record['device']})."
    else:
        await service.detach(args.target)           # a card id or hw: name: the service resolves it
        detached = {"device": args.target, "path": None}
        text = f"Detached {args.target}."
    out.result({"detached": detached}, text)
    return failures.OK


async def set_command(service: bus.Service, args, out: Output) -> int:
    options = dict(args.settings)
    path = await service.set_options(args.bridge, options)
    record = records.bridge_record(path, await service.bridge_properties(path))
    changes = ", ".join(f"{key}={value}" for key, value in options.items())
    out.result({"bridge": record}, f"Changed {render.dash(record['client_name'])}: {changes}.")
    return failures.OK


async def _bridge_path(service: bus.Service, wanted: str) -> dict:
    bridges = [records.bridge_record(p, props) for p, props in (await service.bridges()).items()]
    record = records.find_bridge(bridges, wanted)
    if record is None:
        raise CliError(failures.NOT_FOUND, f"no bridge {shown(wanted)} (see 'cardbridge status')")
    return record


async def restart(service: bus.Service, args, out: Output) -> int:
    record = await _bridge_path(service, args.bridge)
    await service.restart(record["path"])
    out.result({"restarted": {"device": record["device"], "path": record["path"]}},
               f"Restarting {render.dash(record['client_name'])} ({record['device']}).")
    return failures.OK


async def reload(service: bus.Service, args, out: Output) -> int:
    await service.reload()
    out.result({"reloaded": True}, "Configuration reloaded.")
    return failures.OK


async def set_auto_attach(service: bus.Service, args, out: Output) -> int:
    enabled = args.command == "enable"
    await service.set_auto_attach(args.device, enabled)
    text = f"Auto-attach {'enabled' if enabled else 'disabled'} for {args.device}."
    out.result({"device": args.device, "auto_attach": enabled}, text)
    return failures.OK


def _pick_devices(known: list[dict], wanted: list[str]) -> list[dict]:
    if len(set(wanted)) != len(wanted):
        raise CliError(failures.USAGE, "a device is named more than once")
    picked = []
    for name in wanted:
        hits = records.find_device(known, name)
        if not hits:
            raise CliError(failures.NOT_FOUND, f"no such device {shown(name)} (see 'cardbridge devices')")
        if len(hits) > 1:
            ids = ", ".join(h["id"] for h in hits)
            raise CliError(failures.FAILED, f"{shown(name)} matches several devices ({ids}); use a stable id")
        if any(p["id"] == hits[0]["id"] for p in picked):
            raise CliError(failures.USAGE, f"{shown(name)} names a device already given")
        picked.append(hits[0])
    return picked


async def asoundrc_command(service: bus.Service, args, out: Output) -> int:
    known = [records.device_record(info) for info in await service.list_devices()]
    doc = asoundrc.render(_pick_devices(known, args.devices), args.name)
    out.result(doc, doc["text"].rstrip("\n"))
    return failures.OK


async def version(args, out: Output) -> int:
    service_version = None
    try:
        service = await bus.open_service(args.bus)
    except CliError as exc:
        if exc.code not in (failures.NOT_RUNNING, failures.DENIED):
            raise
    else:
        try:
            service_version = (await service.manager_properties()).get("Version")
        finally:
            service.close()
    mine = client_version()
    text = f"cardbridge {mine}\nservice: {service_version or 'not running'}"
    out.result({"client": mine, "service": service_version}, text)
    return failures.OK


async def watch_command(service: bus.Service, args, out: Output) -> int:
    from .watch import run_watch
    return await run_watch(service, out.json_mode)


async def monitor_command(service: bus.Service, args, out: Output) -> int:
    from .monitor import run_monitor
    return await run_monitor(service, out.json_mode)


_WITH_SERVICE = {
    "status": status,
    "devices": devices,
    "attach": attach,
    "detach": detach,
    "enable": set_auto_attach,
    "disable": set_auto_attach,
    "asoundrc": asoundrc_command,
    "watch": watch_command,
    "monitor": monitor_command,
    "set": set_command,
    "restart": restart,
    "reload": reload,
}


async def run(args: argparse.Namespace) -> int:
    out = Output(bool(getattr(args, "json", False)))
    if args.command == "version":
        return await version(args, out)
    if args.command == "asoundrc":                      # check the name before asking anything
        if not asoundrc.VALID_NAME.match(args.name):
            raise CliError(failures.USAGE, f"invalid ALSA device name {shown(args.name)}: "
                           "use letters, digits and _")
    service = await bus.open_service(getattr(args, "bus", None))
    try:
        return await _WITH_SERVICE[args.command](service, args, out)
    finally:
        service.close()
