"""The configuration file (TOML, read-only for the service): defaults, declared devices, profiles.

Parsed in the main asyncio process at start-up, on Reload() and on SIGHUP. An invalid file is
rejected with a one-line InvalidArgument and the running configuration stays in force.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import names
from .errors import InvalidArgument

AUTO_ATTACH = ("none", "usb", "all")
# org.freedesktop.ReserveDevice1 (reserve.py): "ask" takes free cards and asks their owners only
# for the cards you attach yourself; "take" asks for every card; "never" leaves it alone
RESERVE = ("ask", "take", "never")
BRIDGE_KEYS = {"name": str, "capture": int, "playback": int, "rate": int, "period": int,
               "periods": int, "max_periods": int, "quality": str}
LIMITS = {"capture": (0, 64), "playback": (0, 64), "rate": (8000, 384000),
          "period": (16, 8192), "periods": (2, 16), "max_periods": (2, 16)}
# bridge settings whose defaults the top level of the config file sets (Config has a field each)
DEFAULT_KEYS = ("period", "periods", "max_periods", "quality")


@dataclass
class DeclaredDevice:
    """A device the administrator declared: its id is the table name, `pcm` is trusted."""
    id: str
    pcm: str
    options: dict = field(default_factory=dict)


@dataclass
class Config:
    auto_attach: str = "usb"
    reserve: str = "ask"
    hotplug: bool = True
    period: int = 256
    periods: int = 2
    max_periods: int = 4
    quality: str = "medium"
    devices: dict[str, DeclaredDevice] = field(default_factory=dict)
    profiles: dict[str, dict] = field(default_factory=dict)
    path: str | None = None

    def profile(self, device_id: str) -> dict:
        """Per-device settings: the declared device's own keys, then its profile."""
        out: dict = {}
        if device_id in self.devices:
            out.update(self.devices[device_id].options)
        out.update(self.profiles.get(device_id, {}))
        return out


def default_path(system: bool) -> Path:
    if system:
        return Path("/etc/cardbridge/config.toml")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cardbridge" / "config.toml"


def check_bridge_options(opts: dict, where: str) -> dict:
    """Validate bridge settings (config tables and D-Bus options share the rules)."""
    out = {}
    for key, value in opts.items():
        kind = BRIDGE_KEYS.get(key)
        if kind is None:
            raise InvalidArgument(f"{where}: unknown setting '{key}'")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgument(f"{where}: '{key}' must be a whole number")
        if kind is str and not isinstance(value, str):
            raise InvalidArgument(f"{where}: '{key}' must be a string")
        if key in LIMITS:
            lo, hi = LIMITS[key]
            if not lo <= value <= hi:
                raise InvalidArgument(f"{where}: '{key}' must be between {lo} and {hi}")
        if key == "quality" and value not in names.QUALITIES:
            raise InvalidArgument(f"{where}: quality must be one of {', '.join(names.QUALITIES)}")
        if key == "name":
            check_client_name(value, where)
        out[key] = value
    if out.get("capture") == 0 and out.get("playback") == 0:
        raise InvalidArgument(f"{where}: capture and playback cannot both be off")
    return out


def check_client_name(value: str, where: str) -> None:
    """A JACK client name asked for by a user: 1 to 63 bytes of UTF-8 and none of JACK's or the
    service's own names."""
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if not value.strip() or size > names.JACK_CLIENT_NAME_MAX:
        raise InvalidArgument(f"{where}: name must be 1 to {names.JACK_CLIENT_NAME_MAX} bytes "
                              f"of UTF-8 (JACK's limit; this one has {size})")
    if names.jack_client_name(value) in names.RESERVED_CLIENT_NAMES:
        raise InvalidArgument(f"{where}: the JACK client name '{value.strip()}' is reserved "
                              "(JACK's own ports or the service's JACK client)")


def parse_config(text: str, path: str | None = None) -> Config:
    where = path or "config"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{where}: not valid TOML ({exc})") from None
    cfg = Config(path=path)
    known = {"auto_attach", "reserve", "hotplug", "devices", "profiles", *DEFAULT_KEYS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidArgument(f"{where}: unknown setting '{unknown[0]}'")
    if "auto_attach" in data:
        if data["auto_attach"] not in AUTO_ATTACH:
            raise InvalidArgument(f"{where}: auto_attach must be one of {', '.join(AUTO_ATTACH)}")
        cfg.auto_attach = data["auto_attach"]
    if "reserve" in data:
        if data["reserve"] not in RESERVE:
            raise InvalidArgument(f"{where}: reserve must be one of {', '.join(RESERVE)}")
        cfg.reserve = data["reserve"]
    if "hotplug" in data:
        if not isinstance(data["hotplug"], bool):
            raise InvalidArgument(f"{where}: hotplug must be true or false")
        cfg.hotplug = data["hotplug"]
    defaults = check_bridge_options({k: data[k] for k in DEFAULT_KEYS if k in data}, where)
    for key, value in defaults.items():
        setattr(cfg, key, value)
    devices = data.get("devices", {})
    if not isinstance(devices, dict):
        raise InvalidArgument(f"{where}: [devices] must be a table")
    for dev_id, table in devices.items():
        if not isinstance(table, dict) or not isinstance(table.get("pcm"), str) or not table["pcm"]:
            raise InvalidArgument(f"{where}: [devices.{dev_id}] needs pcm = \"<ALSA PCM name>\"")
        opts = {k: v for k, v in table.items() if k != "pcm"}
        cfg.devices[dev_id] = DeclaredDevice(dev_id, table["pcm"],
                                             check_bridge_options(opts, f"{where} [devices.{dev_id}]"))
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise InvalidArgument(f"{where}: [profiles] must be a table")
    for dev_id, table in profiles.items():
        if not isinstance(table, dict):
            raise InvalidArgument(f"{where}: [profiles.\"{dev_id}\"] must be a table")
        attach = table.get("attach")
        if attach is not None and not isinstance(attach, bool):
            raise InvalidArgument(f"{where}: [profiles.\"{dev_id}\"] attach must be true or false")
        opts = check_bridge_options({k: v for k, v in table.items() if k != "attach"},
                                    f"{where} [profiles.\"{dev_id}\"]")
        if attach is not None:
            opts["attach"] = attach
        cfg.profiles[dev_id] = opts
    return cfg


def load_config(path: str | os.PathLike | None) -> Config:
    """Read and validate; an absent or empty file means all defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config(path=str(p))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{p}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_config(text, str(p))
