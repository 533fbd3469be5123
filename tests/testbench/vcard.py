"""The virtual sound card from Python: ALSA configuration for it, and control of a running card.

Runs in test, demo and benchmark processes (never in the service). The card itself is the
alsa-lib plugin built from vcard.c (`make vcard`); all its streams, in every process, share one
clock through a small shared-memory file whose header this module reads and writes. Layout (see
vcard.c): magic/version/rate/channels/generation/unplugged, then the clock parameters t0, base,
ppm, wander and the stall window.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = 0x43564243
VERSION = 1
HEADER = 128
TL_FRAMES = 65536
_HDR = struct.Struct("<8I2i2q4d3q")   # up to stall_until_ns (112 bytes)

OFF_GENERATION = 28
OFF_UNPLUGGED = 32
OFF_BASE_NS = 48
OFF_BASE_POS = 56
OFF_PPM = 64
OFF_WANDER_PPM = 72
OFF_WANDER_PERIOD = 80
OFF_STALL_START = 96
OFF_STALL_UNTIL = 104


def plugin_path() -> Path:
    env = os.environ.get("CARDBRIDGE_VCARD_PLUGIN")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo / "build" / "alsa-lib" / "libasound_module_pcm_cbvcard.so"


def hw_override_config(directory: Path) -> str:
    """Write an ALSA config where `hw:CARD=N` opens the virtual card whose clock file is
    `directory/cardN.vcard` (how the hotplug tests make a udev-announced card number real);
    returns the ALSA_CONFIG_PATH value that loads it after the system's alsa.conf."""
    conf = Path(directory) / "asound.conf"
    conf.write_text(f'''pcm_type.cbvcard {{ lib "{plugin_path()}" }}
pcm.!hw {{
    @args [ CARD DEV SUBDEV ]
    @args.CARD {{ type string }}
    @args.DEV {{ type integer default 0 }}
    @args.SUBDEV {{ type integer default -1 }}
    type cbvcard
    shm {{ @func concat strings [ "{directory}/card" $CARD ".vcard" ] }}
}}
''')
    return f"/usr/share/alsa/alsa.conf:{conf}"


@dataclass
class VirtualCard:
    name: str
    rate: int = 48000
    capture_channels: int = 2
    playback_channels: int = 2
    ppm: float = 0.0
    wander_ppm: float = 0.0
    wander_period: float = 60.0
    usb_step_us: float = 0.0
    shm: str = ""                 # path of the shared clock file; set by write_alsa_config
    extra: dict = field(default_factory=dict)

    def alsa_block(self) -> str:
        return (f'pcm.{self.name} {{\n  type cbvcard\n  shm "{self.shm}"\n  rate {int(self.rate)}\n'
                f"  capture_channels {int(self.capture_channels)}\n"
                f"  playback_channels {int(self.playback_channels)}\n"
                f"  ppm {float(self.ppm)!r}\n  wander_ppm {float(self.wander_ppm)!r}\n"
                f"  wander_period {float(self.wander_period)!r}\n"
                f"  usb_step_us {float(self.usb_step_us)!r}\n}}\n")


def write_alsa_config(cards, path) -> str:
    """Write an ALSA config declaring `cards`; returns the value for ALSA_CONFIG_PATH.

    Cards without an `shm` path get one next to the config file. A fresh config starts fresh
    clocks: any old shared file of these cards is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = [f'pcm_type.cbvcard {{\n  lib "{plugin_path()}"\n}}\n']
    for card in cards:
        if not card.shm:
            card.shm = str(path.parent / f"{card.name}.vcard")
        try:
            os.unlink(card.shm)
        except FileNotFoundError:
            pass
        blocks.append(card.alsa_block())
    path.write_text("\n".join(blocks))
    return f"/usr/share/alsa/alsa.conf:{path}"


def create_card(card: VirtualCard) -> "CardControl":
    """Create the card's shared clock now (t0 = now), before any ALSA open."""
    tl_ch = max(card.capture_channels, card.playback_channels, 1)
    size = HEADER + TL_FRAMES * 4 + TL_FRAMES * tl_ch * 4
    fd = os.open(card.shm, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.ftruncate(fd, size)
        m = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    head = _HDR.pack(0, VERSION, card.rate, card.capture_channels, card.playback_channels, tl_ch,
                     TL_FRAMES, 1, 0, 0, now, now, 0.0, card.ppm, card.wander_ppm,
                     card.wander_period, int(card.usb_step_us * 1000), 0, 0)
    m[:len(head)] = head
    stamps = memoryview(m)[HEADER:HEADER + TL_FRAMES * 4].cast("I")
    for i in range(TL_FRAMES):
        stamps[i] = (~i) & 0xFFFFFFFF
    stamps.release()
    struct.pack_into("<I", m, 0, MAGIC)
    m.close()
    return CardControl(card.shm)


class CardControl:
    """A handle on a card's shared clock: read the true position, inject faults."""

    def __init__(self, shm_path: str, wait: float = 5.0):
        deadline = time.monotonic() + wait
        while True:
            try:
                fd = os.open(shm_path, os.O_RDWR)
                try:
                    if os.fstat(fd).st_size >= HEADER:
                        self._map = mmap.mmap(fd, HEADER)
                        if struct.unpack_from("<I", self._map, 0)[0] == MAGIC:
                            break
                        self._map.close()
                finally:
                    os.close(fd)
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise FileNotFoundError(f"no virtual card clock at {shm_path}")
            time.sleep(0.01)
        self.path = shm_path

    def _header(self):
        return _HDR.unpack_from(self._map, 0)

    @property
    def rate(self) -> int:
        return self._header()[2]

    @property
    def generation(self) -> int:
        return struct.unpack_from("<I", self._map, OFF_GENERATION)[0]

    @property
    def unplugged(self) -> bool:
        return bool(struct.unpack_from("<i", self._map, OFF_UNPLUGGED)[0])

    @property
    def ppm(self) -> float:
        return struct.unpack_from("<d", self._map, OFF_PPM)[0]

    def frames_at(self, t_ns: int | None = None) -> float:
        """The card's true frame position at CLOCK_MONOTONIC time t_ns (now by default)."""
        h = self._header()
        (rate, t0, base, base_pos, ppm, wppm, wper, step, s0, s1) = (
            h[2], h[10], h[11], h[12], h[13], h[14], h[15], h[16], h[17], h[18])
        t = time.clock_gettime_ns(time.CLOCK_MONOTONIC) if t_ns is None else t_ns
        if s0 <= t < s1:
            t = s0
        if step > 0:
            t = t0 + ((t - t0) // step) * step

        def wander(x):
            if wppm == 0 or wper <= 0:
                return 0.0
            s = (x - t0) * 1e-9
            return wppm * 1e-6 * (wper / (2 * math.pi)) * (1 - math.cos(2 * math.pi * s / wper))

        return base_pos + rate * ((t - base) * 1e-9 * (1 + ppm * 1e-6) + wander(t) - wander(base))

    def set_ppm(self, ppm: float) -> None:
        """Change the offset from now on, without a jump in position."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        pos = self.frames_at(now)
        struct.pack_into("<q", self._map, OFF_BASE_NS, now)
        struct.pack_into("<d", self._map, OFF_BASE_POS, pos)
        struct.pack_into("<d", self._map, OFF_PPM, float(ppm))

    def set_wander(self, ppm: float, period: float) -> None:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        pos = self.frames_at(now)
        struct.pack_into("<q", self._map, OFF_BASE_NS, now)
        struct.pack_into("<d", self._map, OFF_BASE_POS, pos)
        struct.pack_into("<d", self._map, OFF_WANDER_PPM, float(ppm))
        struct.pack_into("<d", self._map, OFF_WANDER_PERIOD, float(period))

    def unplug(self) -> None:
        struct.pack_into("<i", self._map, OFF_UNPLUGGED, 1)

    def replug(self) -> None:
        struct.pack_into("<I", self._map, OFF_GENERATION, self.generation + 1)
        struct.pack_into("<i", self._map, OFF_UNPLUGGED, 0)

    def stall(self, seconds: float) -> None:
        """Freeze the card's pointer for `seconds`, then let it jump to the true position."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        struct.pack_into("<q", self._map, OFF_STALL_UNTIL, now + int(seconds * 1e9))
        struct.pack_into("<q", self._map, OFF_STALL_START, now)

    def close(self) -> None:
        self._map.close()
