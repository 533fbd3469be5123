"""The virtual sound card from Python: ALSA configuration for it, and control of a running card.

Runs in test, demo and benchmark processes (never in the service). The card itself is the
alsa-lib plugin built from vcard.c (`make vcard`); all its streams, in every process, share one
clock through a small shared-memory file whose header this module reads and writes. Layout (see
vcard_clock.h): magic/version/rate/channels/generation/unplugged, the clock parameters t0, base,
ppm, wander and the stall window, the capture source and its sine, the xrun counters; then the
timeline ring of played frames (per-frame stamps, then the samples).
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = 0x43564243
VERSION = 2
HEADER = 256
TL_FRAMES = 65536
_HDR = struct.Struct("<8I2i2q4d3q")   # up to stall_until_ns (112 bytes)
_HDR2 = struct.Struct("<3If2I2q")     # capture_source .. last_xrun_playback_frame, at 112
FORMATS = ("S16_LE", "S24_3LE", "S24_LE", "S32_LE", "FLOAT_LE")
DEFAULT_FORMATS = ("S16_LE", "S24_3LE", "S32_LE", "FLOAT_LE")
SOURCES = ("loop", "sine")

OFF_GENERATION = 28
OFF_UNPLUGGED = 32
OFF_BUSY = 36
OFF_BASE_NS = 48
OFF_BASE_POS = 56
OFF_PPM = 64
OFF_WANDER_PPM = 72
OFF_WANDER_PERIOD = 80
OFF_STALL_START = 96
OFF_STALL_UNTIL = 104
OFF_SOURCE = 112
OFF_XRUNS = 128                       # capture u32, playback u32


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
    capture_source: str = "loop"  # "loop" (playback looped back) or "sine" (see sine_hz)
    sine_hz: int = 997            # capture channel c in sine mode: sine_hz + c * sine_step_hz
    sine_step_hz: int = 2
    sine_level_db: float = -6.0
    formats: tuple = DEFAULT_FORMATS   # the sample formats the card offers
    timeline_frames: int = TL_FRAMES   # played frames kept for capture's loop and for a tap
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.capture_source not in SOURCES:
            raise ValueError(f"capture_source must be one of {SOURCES}")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ValueError(f"formats must be a non-empty choice of {FORMATS}")
        if self.timeline_frames < 4096 or self.timeline_frames & (self.timeline_frames - 1):
            raise ValueError("timeline_frames must be a power of two, at least 4096")

    def sine_freqs(self, channels: int) -> list[int]:
        """The sine source's frequency on each of `channels` channels (Hz)."""
        return [self.sine_hz + c * self.sine_step_hz for c in range(channels)]

    def alsa_block(self) -> str:
        return (f'pcm.{self.name} {{\n  type cbvcard\n  shm "{self.shm}"\n  rate {int(self.rate)}\n'
                f"  capture_channels {int(self.capture_channels)}\n"
                f"  playback_channels {int(self.playback_channels)}\n"
                f"  ppm {float(self.ppm)!r}\n  wander_ppm {float(self.wander_ppm)!r}\n"
                f"  wander_period {float(self.wander_period)!r}\n"
                f"  usb_step_us {float(self.usb_step_us)!r}\n"
                f'  capture_source "{self.capture_source}"\n'
                f"  sine_hz {int(self.sine_hz)}\n  sine_step_hz {int(self.sine_step_hz)}\n"
                f"  sine_level_db {float(self.sine_level_db)!r}\n"
                f'  formats "{" ".join(self.formats)}"\n'
                f"  timeline_frames {int(self.timeline_frames)}\n}}\n")


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
    frames = card.timeline_frames
    size = HEADER + frames * 4 + frames * tl_ch * 4
    fd = os.open(card.shm, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.ftruncate(fd, size)
        m = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    head = _HDR.pack(0, VERSION, card.rate, card.capture_channels, card.playback_channels, tl_ch,
                     frames, 1, 0, 0, now, now, 0.0, card.ppm, card.wander_ppm,
                     card.wander_period, int(card.usb_step_us * 1000), 0, 0)
    head += _HDR2.pack(SOURCES.index(card.capture_source), card.sine_hz, card.sine_step_hz,
                       10 ** (card.sine_level_db / 20), 0, 0, 0, 0)
    m[:len(head)] = head
    stamps = np.frombuffer(m, np.uint32, frames, HEADER)
    stamps[:] = ~np.arange(frames, dtype=np.uint32)
    del stamps
    struct.pack_into("<I", m, 0, MAGIC)
    m.close()
    return CardControl(card.shm)


@dataclass(frozen=True)
class CardClock:
    """The clock parameters of a card's header (one snapshot): the card's position as a function
    of CLOCK_MONOTONIC time, vectorised for the benchmarks' analysis (vcard_clock.h's formula)."""
    rate: int
    t0_ns: int
    base_ns: int
    base_pos: float
    ppm: float
    wander_ppm: float
    wander_period: float
    step_ns: int = 0
    stall_start_ns: int = 0
    stall_until_ns: int = 0

    @classmethod
    def from_header(cls, header: tuple) -> "CardClock":
        return cls(header[2], *header[10:19])

    def _wander(self, t_ns):
        if self.wander_ppm == 0 or self.wander_period <= 0:
            return np.zeros_like(np.asarray(t_ns, np.float64))
        s = (np.asarray(t_ns, np.float64) - self.t0_ns) * 1e-9
        p = self.wander_period
        return self.wander_ppm * 1e-6 * (p / (2 * np.pi)) * (1 - np.cos(2 * np.pi * s / p))

    def position(self, t_ns, pointer: bool = True):
        """Frames at time t_ns (int or array of ns). `pointer`: as the card's pointer moves
        (frozen during a stall, in USB-like steps); without, the sample clock itself."""
        if pointer:
            t = np.asarray(t_ns, np.int64)
            t = np.where((t >= self.stall_start_ns) & (t < self.stall_until_ns),
                         self.stall_start_ns, t)
            if self.step_ns > 0:
                t = self.t0_ns + ((t - self.t0_ns) // self.step_ns) * self.step_ns
            s = (t - self.base_ns).astype(np.float64) * 1e-9
        else:
            t = np.asarray(t_ns, np.float64)
            s = (t - self.base_ns) * 1e-9
        return self.base_pos + self.rate * (s * (1 + self.ppm * 1e-6) + self._wander(t)
                                            - self._wander(self.base_ns))

    def speed(self, t_ns):
        """The sample clock's rate (frames per second of CLOCK_MONOTONIC) at t_ns."""
        s = (np.asarray(t_ns, np.float64) - self.t0_ns) * 1e-9
        wander = (self.wander_ppm * np.sin(2 * np.pi * s / self.wander_period)
                  if self.wander_ppm and self.wander_period > 0 else 0.0)
        return self.rate * (1 + (self.ppm + wander) * 1e-6)

    def time_of(self, frames):
        """CLOCK_MONOTONIC ns (float) at which the sample clock reaches `frames` (inverse of
        position(pointer=False), by Newton's method)."""
        n = np.asarray(frames, np.float64)
        t = self.base_ns + (n - self.base_pos) / (self.rate * (1 + self.ppm * 1e-6)) * 1e9
        for _ in range(4):
            err = self.position(t, pointer=False) - n
            t = t - err / self.speed(t) * 1e9
        return t


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

    @property
    def clock(self) -> CardClock:
        """The clock parameters now (a snapshot)."""
        return CardClock.from_header(self._header())

    @property
    def xruns(self) -> tuple[int, int]:
        """(capture overruns, playback underruns) seen by the card so far, in every process."""
        return struct.unpack_from("<2I", self._map, OFF_XRUNS)

    @property
    def capture_source(self) -> str:
        return SOURCES[struct.unpack_from("<I", self._map, OFF_SOURCE)[0]]

    def set_capture_source(self, source: str) -> None:
        """Switch capture between the loop and the sine, live (from the next period read)."""
        struct.pack_into("<I", self._map, OFF_SOURCE, SOURCES.index(source))

    def frames_at(self, t_ns: int | None = None) -> float:
        """The card's pointer position at CLOCK_MONOTONIC time t_ns (now by default)."""
        t = time.clock_gettime_ns(time.CLOCK_MONOTONIC) if t_ns is None else t_ns
        return float(self.clock.position(t))

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

    def set_busy(self, busy: bool) -> None:
        """While busy, opening the card fails with EBUSY (another program has it open); streams
        already open run on."""
        struct.pack_into("<i", self._map, OFF_BUSY, 1 if busy else 0)

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
