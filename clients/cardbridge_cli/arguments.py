"""The `cardbridge` command line: one argparse parser, the single source for --help, the man
page and the shell completions (docs.py).

Runs in the CLI process. Usage errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from cardbridge.names import QUALITIES

from . import failures

PROG = "cardbridge"
DESCRIPTION = ("Control the cardbridge service, which attaches extra ALSA sound cards to JACK "
               "as drift-corrected port sets.")
DEFAULT_COMMAND = "status"
ASOUNDRC_DEFAULT_NAME = "cardbridge"


def exit_codes_text() -> str:
    return "\n".join(f"  {code}  {meaning}" for code, meaning in failures.EXIT_CODES)


EPILOG = f"""\
BRIDGE may be a stable device id, a JACK client name or a bridge's D-Bus object path.
DEVICE may be a stable device id (see 'cardbridge devices'), an ALSA card id, number or
hw: name, or the name of a device declared in the service's configuration file.

exit status:
{exit_codes_text()}

environment:
  NO_COLOR                  no colour even on a terminal
  DBUS_SESSION_BUS_ADDRESS  the session bus to look on (looked at first)
  DBUS_SYSTEM_BUS_ADDRESS   the system bus to look on
"""


class UsageErrorParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (`cardbridge: error: …`, exit 2)."""

    def error(self, message: str):
        message = failures.one_line(message)
        self.exit(failures.USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:                # undecodable bytes arrive as lone surrogates
        return False
    return True


def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    if value < 0 or value > 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"out of range: {text}")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


WAIT_DEFAULT = 30
SETTING_KINDS = {"name": str, "capture": int, "playback": int, "rate": int, "period": int,
                 "periods": int, "max_periods": int, "quality": str}


def _setting(text: str) -> tuple[str, object]:
    """KEY=VALUE of `set`, typed (the service checks the ranges)."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or key not in SETTING_KINDS:
        raise argparse.ArgumentTypeError(
            f"not KEY=VALUE with KEY one of {', '.join(SETTING_KINDS)}: {text!r}")
    if SETTING_KINDS[key] is int:
        return key, _count(value)
    if key == "quality" and value not in QUALITIES:
        raise argparse.ArgumentTypeError(f"quality must be one of {', '.join(QUALITIES)}")
    return key, value


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """--system/--session/--json, accepted before and after the command."""
    default = argparse.SUPPRESS if suppress else None
    parent = argparse.ArgumentParser(add_help=False)
    where = parent.add_mutually_exclusive_group()
    where.add_argument("--system", dest="bus", action="store_const", const="system",
                       default=default, help="talk to the service on the system bus")
    where.add_argument("--session", dest="bus", action="store_const", const="session",
                       default=default, help="talk to the service on the session bus "
                       "(default: wherever it is found, session bus first)")
    parent.add_argument("--json", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="print one JSON document (JSON lines for watch) with the documented schema")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = UsageErrorParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              parents=[_common_options(suppress=False)])
    parser.add_argument("--version", action="store_true",
                        help="print the client's and the service's versions and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=UsageErrorParser)
    common = [_common_options(suppress=True)]

    def command(name: str, help_text: str, description: str | None = None):
        return commands.add_parser(name, help=help_text, description=description or help_text,
                                   parents=common, epilog=f"exit status:\n{exit_codes_text()}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    status = command("status", "show the service, JACK and every bridge (the default command)",
                     "Show the service, the JACK server and every bridge; with BRIDGE, "
                     "everything about one bridge.")
    status.add_argument("bridge", nargs="?", metavar="BRIDGE",
                        help="device id, JACK client name or object path of a bridge")

    devices = command("devices", "list the sound cards the service knows",
                      "List every sound card the service knows, attached or not.")
    devices.add_argument("--ids", action="store_true",
                         help="print only the stable device ids, one per line")

    attach = command("attach", "attach a card to JACK",
                     "Attach a card to JACK. Returns as soon as the service has accepted it; "
                     "the bridge then starts by itself (see 'cardbridge status').")
    attach.add_argument("device", metavar="DEVICE", help="the card to attach")
    attach.add_argument("--name", metavar="NAME", help="JACK client name (default: the card's name)")
    attach.add_argument("--capture", metavar="N", type=_count,
                        help="capture channels (0: no capture; default: all the card has)")
    attach.add_argument("--playback", metavar="N", type=_count,
                        help="playback channels (0: no playback; default: all the card has)")
    attach.add_argument("--rate", metavar="HZ", type=_positive,
                        help="the card's sample rate (default: JACK's)")
    attach.add_argument("--period", metavar="FRAMES", type=_positive, help="the card's period size")
    attach.add_argument("--periods", metavar="N", type=_positive, help="periods in the card's buffer")
    attach.add_argument("--max-periods", metavar="N", type=_positive,
                        help="periods the card may grow to after repeated dropouts (default 4; "
                             "equal to --periods keeps the latency fixed)")
    attach.add_argument("--quality", choices=QUALITIES, help="resampler quality")
    attach.add_argument("--no-persist", dest="persist", action="store_false",
                        help="do not remember this card: no re-attach on replug or restart")
    attach.add_argument("--wait", action="store_true",
                        help="return only when the bridge runs (exit 0) or clearly does not: it "
                             "failed, or waits (for JACK, for the card, for whoever holds the "
                             "card) with its reason (exit 7)")
    attach.add_argument("--timeout", metavar="SECONDS", type=_positive, default=WAIT_DEFAULT,
                        help="with --wait: how long the bridge may take to run "
                             "(default: %(default)s)")

    set_ = command("set", "change an attached bridge in place",
                   "Change an attached bridge's settings: the JACK client name, channels, rate, "
                   "period, periods, max_periods, quality. Remembered; the bridge's worker starts "
                   "again with them.")
    set_.add_argument("bridge", metavar="BRIDGE", help="the bridge to change")
    set_.add_argument("settings", nargs="+", metavar="KEY=VALUE", type=_setting,
                      help="name=NAME, capture=N, playback=N, rate=HZ, period=FRAMES, "
                           "periods=N, max_periods=N, quality=" + "|".join(QUALITIES))

    restart = command("restart", "start a bridge again",
                      "Start a bridge's stream again; a bridge that was given up, or held (the "
                      "card was in use), is looked at again.")
    restart.add_argument("bridge", metavar="BRIDGE", help="the bridge to restart")

    command("reload", "make the service re-read its configuration file",
            "Make the service re-read its configuration file (an invalid one is refused and "
            "the running configuration stays).")

    detach = command("detach", "detach a bridge (stop bridging a card)",
                     "Detach a bridge: its JACK client goes away and the card is not re-attached.")
    detach.add_argument("target", metavar="BRIDGE|DEVICE", help="the bridge or card to detach")

    for name, verb in (("enable", "on"), ("disable", "off")):
        sub = command(name, f"turn automatic attaching {verb} for a card",
                      f"Turn automatic attaching {verb} for a card (remembered by the service).")
        sub.add_argument("device", metavar="DEVICE", help="the card")

    command("watch", "live view of every bridge, with drift and delay history",
            "Live view of every bridge, updated as the service reports changes, with a short "
            "history of drift (ppm) and delay error (frames) per bridge. Quit with q or Ctrl-C. "
            "With --json, print one JSON object per event (JSON lines). When the output is not "
            "a terminal, plain frames are printed instead (no screen control codes), at most "
            "one a second and only when something changed.")

    command("monitor", "print every event of the service as it happens",
            "Print every event of the service, one line each, as it happens: bridges added, "
            "changed (each property) and removed, devices added and removed, the service's "
            "properties, the service starting and stopping. With --json, one JSON object per "
            "line. Ctrl-C ends it.")

    asoundrc = command("asoundrc", "print an ALSA multi device for cards that share a clock",
                       "Print an ALSA 'multi' pcm and its ctl for cards whose clocks are locked "
                       "together (JACK FAQ, method 3), naming cards by their ALSA card ids.")
    asoundrc.add_argument("devices", nargs="+", metavar="DEVICE", help="the cards, in order")
    asoundrc.add_argument("--name", default=ASOUNDRC_DEFAULT_NAME, metavar="NAME",
                          help="name of the ALSA device (default: %(default)s)")

    command("version", "print the client's and the service's versions")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for value in vars(args).values():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not _is_utf8(text):
                parser.error(f"argument is not valid UTF-8: {text.encode('utf-8', 'surrogateescape')[:60]!r}")
    if args.version and args.command is None:
        args.command = "version"
    if args.command is None:
        args.command = DEFAULT_COMMAND
        args.bridge = None
    return args
