"""Exit codes of the `cardbridge` CLI and the one error type that carries them.

Runs in the CLI process. Every failure the user can meet ends as a `CliError`; `main()` prints it
as one line on stderr and exits with its code. Pure: no D-Bus import here (see bus.py).
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
NOT_RUNNING = 3
DENIED = 4
NOT_FOUND = 5
CONFLICT = 6
NOT_READY = 7
INTERRUPTED = 130

# (code, meaning) in the order shown by --help, the man page and the README.
EXIT_CODES = (
    (OK, "success"),
    (FAILED, "the operation failed"),
    (USAGE, "usage error: bad command line or invalid argument"),
    (NOT_RUNNING, "the cardbridge service is not running (or no bus could be reached)"),
    (DENIED, "permission denied"),
    (NOT_FOUND, "no such device or bridge"),
    (CONFLICT, "conflict: the device is already attached or busy"),
    (NOT_READY, "the bridge is not running (status BRIDGE; attach --wait: it failed, waits, or "
                "did not start in time; the reason is printed)"),
)

_SERVICE_ERROR_PREFIX = "org.cardbridge.CardBridge1.Error."
_CODES_BY_ERROR_NAME = {
    _SERVICE_ERROR_PREFIX + "NoSuchDevice": NOT_FOUND,
    _SERVICE_ERROR_PREFIX + "NoSuchBridge": NOT_FOUND,
    _SERVICE_ERROR_PREFIX + "AlreadyAttached": CONFLICT,
    _SERVICE_ERROR_PREFIX + "DeviceBusy": CONFLICT,
    _SERVICE_ERROR_PREFIX + "InvalidArgument": USAGE,
    _SERVICE_ERROR_PREFIX + "NotPermitted": DENIED,
    _SERVICE_ERROR_PREFIX + "Internal": FAILED,
    "org.freedesktop.DBus.Error.AccessDenied": DENIED,
    "org.freedesktop.DBus.Error.AuthFailed": DENIED,
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": DENIED,
    "org.freedesktop.DBus.Error.ServiceUnknown": NOT_RUNNING,
    "org.freedesktop.DBus.Error.NameHasNoOwner": NOT_RUNNING,
    "org.freedesktop.DBus.Error.Spawn.ChildExited": NOT_RUNNING,
    "org.freedesktop.DBus.Error.Spawn.ExecFailed": NOT_RUNNING,
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound": NOT_RUNNING,
    "org.freedesktop.DBus.Error.InvalidArgs": USAGE,
    "org.freedesktop.DBus.Error.UnknownObject": NOT_FOUND,
}


MAX_MESSAGE = 300             # characters; a service may echo back a huge argument


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """Whitespace folded to single spaces, cut to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shown(value: str, limit: int = 60) -> str:
    """A user-given name quoted for a message, cut when long."""
    return repr(value if len(value) <= limit else value[:limit - 1] + "…")


class CliError(Exception):
    """A failure to report as `cardbridge: error: <message>` with exit code `code`."""

    def __init__(self, code: int, message: str):
        super().__init__(one_line(message) or "unknown error")
        self.code = code

    @property
    def message(self) -> str:
        return str(self)


def from_dbus_error(error_name: str, text: str) -> CliError:
    """Turn a D-Bus error reply into a CliError with the documented exit code."""
    code = _CODES_BY_ERROR_NAME.get(error_name, FAILED)
    text = one_line(text or "")
    if code == NOT_RUNNING:
        return CliError(code, "the cardbridge service is not running" + (f" ({text})" if text else ""))
    if error_name.startswith(_SERVICE_ERROR_PREFIX) or error_name.endswith(".AccessDenied"):
        return CliError(code, text or error_name.rsplit(".", 1)[-1])
    short = error_name.rsplit(".", 1)[-1]
    return CliError(code, f"{text} ({short})" if text else short)
