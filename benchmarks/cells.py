"""The benchmark's matrix: cells, each one JACK configuration with four cards of different kinds.

Plain data, read by the benchmark process (benchmarks/run.py). A full product of the issue's
dimensions (JACK period × JACK rate × card rate × offset × wander × channels × direction ×
sample format) is out of reach; the cells below form a covering set in which every value of
every dimension appears at least once (`coverage()` checks it, and a test keeps it so), each
cell run once per bridge kind. `QUICK` is a subset for development. S24_LE (24 bits in 32),
which neither cardbridge nor zita-a2j opens today, is on one card only (c2's d), so that the
other cards measure something.
"""

from __future__ import annotations

from dataclasses import dataclass

from testbench.vcard import VirtualCard

# every value the matrix must show (the dimensions, plus a 1:2 card and USB-like steps)
JACK_PERIODS = (64, 128, 256, 1024)
JACK_RATES = (44100, 48000)
CARD_RATES = (24000, 44100, 48000, 88200, 96000, 192000)
OFFSETS = (-1000.0, -320.0, -50.0, 0.0, 60.0, 150.0, 1000.0)
WANDERS = ((0.0, 0.0), (10.0, 60.0), (20.0, 45.0), (50.0, 20.0))
CHANNELS = (1, 2, 6, 10, 18)
DIRECTIONS = ("duplex", "capture", "playback")
FORMATS = ("S16_LE", "S24_3LE", "S24_LE", "S32_LE", "FLOAT_LE")
USB_STEPS = (0.0, 1000.0)

TIMELINE = 1 << 19        # frames of played audio the card keeps for the tap (2.7 s at 192 kHz)


@dataclass(frozen=True)
class CardSpec:
    key: str                      # the card's letter in its cell
    rate: int
    ppm: float
    channels: int = 2
    direction: str = "duplex"     # duplex | capture | playback (the card has only that stream)
    fmt: str = "S32_LE"           # the only sample format the card offers
    wander_ppm: float = 0.0       # ± this many ppm ...
    wander_period: float = 0.0    # ... over this period (s)
    usb_step_us: float = 0.0      # the pointer moves in steps of this (0: continuously)
    period: int = 256             # ALSA period of every bridge kind on this card
    periods: int = 2

    @property
    def capture_channels(self) -> int:
        return self.channels if self.direction in ("duplex", "capture") else 0

    @property
    def playback_channels(self) -> int:
        return self.channels if self.direction in ("duplex", "playback") else 0

    def describe(self) -> str:
        wander = (f", ±{self.wander_ppm:g} ppm/{self.wander_period:g} s"
                  if self.wander_ppm else "")
        step = f", {self.usb_step_us / 1000:g} ms steps" if self.usb_step_us else ""
        direction = "" if self.direction == "duplex" else f", {self.direction} only"
        return (f"{self.rate / 1000:g} kHz {self.ppm:+g} ppm{wander}, {self.channels} ch"
                f"{direction}, {self.fmt}{step}, ALSA {self.period}×{self.periods}")

    def virtual_card(self, name: str) -> VirtualCard:
        return VirtualCard(name, rate=self.rate, capture_channels=self.capture_channels,
                           playback_channels=self.playback_channels, ppm=self.ppm,
                           wander_ppm=self.wander_ppm,
                           wander_period=self.wander_period or 60.0,
                           usb_step_us=self.usb_step_us, capture_source="sine",
                           formats=(self.fmt,), timeline_frames=TIMELINE)


@dataclass(frozen=True)
class Cell:
    name: str
    jack_rate: int
    jack_period: int
    cards: tuple[CardSpec, ...]
    note: str = ""

    def describe(self) -> str:
        return f"JACK {self.jack_rate / 1000:g} kHz / {self.jack_period}"


C = CardSpec
CELLS = (
    Cell("c1", 48000, 256, (
        C("a", 48000, 150.0, fmt="S32_LE", usb_step_us=1000.0),
        C("b", 48000, -320.0, fmt="S16_LE", wander_ppm=20.0, wander_period=45.0),
        C("c", 44100, 60.0, fmt="S24_3LE"),
        C("d", 48000, 0.0, channels=6, fmt="FLOAT_LE", wander_ppm=10.0, wander_period=60.0),
    ), "the issue's four cards, at the issue's JACK setting"),
    Cell("c2", 48000, 128, (
        C("a", 96000, 150.0, fmt="S24_3LE", period=512),
        C("b", 48000, -1000.0, fmt="S16_LE", wander_ppm=50.0, wander_period=20.0),
        C("c", 48000, 60.0, channels=10, fmt="S32_LE", wander_ppm=10.0, wander_period=60.0),
        C("d", 44100, -50.0, channels=1, direction="capture", fmt="S24_LE", period=128),
    ), "2:1, a cheap card far off with a fast wander, 10 channels, capture only"),
    Cell("c3", 48000, 64, (
        C("a", 48000, 0.0, fmt="FLOAT_LE", period=64, periods=3),
        C("b", 192000, 1000.0, fmt="S32_LE", period=1024),
        C("c", 44100, -320.0, direction="playback", fmt="S16_LE", usb_step_us=1000.0, period=128),
        C("d", 24000, 60.0, channels=1, fmt="S24_3LE", period=128),
    ), "the smallest period; 4:1 and 1:2 rates, playback only, mono"),
    Cell("c4", 44100, 1024, (
        C("a", 44100, 150.0, channels=18, fmt="S24_3LE", period=1024),
        C("b", 48000, -1000.0, fmt="FLOAT_LE", wander_ppm=50.0, wander_period=20.0, period=1024),
        C("c", 88200, -50.0, direction="capture", fmt="S32_LE", period=2048),
        C("d", 96000, 1000.0, channels=6, direction="playback", fmt="S16_LE", period=2048),
    ), "the largest period, JACK at 44.1 kHz: 18 channels, 2:1 both ways"),
    Cell("c5", 44100, 128, (
        C("a", 88200, 60.0, fmt="S32_LE", usb_step_us=1000.0, period=256),
        C("b", 192000, -320.0, fmt="S24_3LE", wander_ppm=20.0, wander_period=45.0, period=1024),
        C("c", 44100, 0.0, channels=1, direction="playback", fmt="FLOAT_LE", period=128),
        C("d", 48000, 150.0, channels=10, fmt="S16_LE", wander_ppm=10.0, wander_period=60.0),
    ), "JACK at 44.1 kHz with a small period: 2:1, 192 kHz wandering, mono playback"),
)
# the same card alone on its JACK server: against its row in c1, what four cards at once cost
SOLO = (Cell("solo", 48000, 256, (CELLS[0].cards[1],),
             "card b of c1 alone on its JACK server"),)
# the measurement's own floor: a card at JACK's rate and clock, bridged without resampling
REFERENCE = Cell("ref", 48000, 256, (C("a", 48000, 0.0, fmt="FLOAT_LE", periods=4),
                                     C("b", 48000, 0.0, fmt="S24_3LE", channels=6, periods=4)),
                 "cards on JACK's own clock through zita -S (no resampling): the bench's floor")
QUICK = ("c1", "c2")


def coverage(cells=CELLS) -> dict[str, list]:
    """Values of each dimension that no cell shows (all lists empty: the set covers)."""
    cards = [c for cell in cells for c in cell.cards]
    seen = {
        "jack_period": {cell.jack_period for cell in cells},
        "jack_rate": {cell.jack_rate for cell in cells},
        "card_rate": {c.rate for c in cards},
        "offset": {c.ppm for c in cards},
        "wander": {(c.wander_ppm, c.wander_period) for c in cards},
        "channels": {c.channels for c in cards},
        "direction": {c.direction for c in cards},
        "format": {c.fmt for c in cards},
        "usb_step": {c.usb_step_us for c in cards},
    }
    wanted = {"jack_period": JACK_PERIODS, "jack_rate": JACK_RATES, "card_rate": CARD_RATES,
              "offset": OFFSETS, "wander": WANDERS, "channels": CHANNELS,
              "direction": DIRECTIONS, "format": FORMATS, "usb_step": USB_STEPS}
    return {k: [v for v in wanted[k] if v not in seen[k]] for k in wanted}


def by_name(names: str | None, quick: bool = False) -> list[Cell]:
    """Cells named in a comma-separated list (all, the solo one included, by default; QUICK
    with quick)."""
    known = {cell.name: cell for cell in CELLS + SOLO}
    if names and REFERENCE.name in names.split(","):
        known[REFERENCE.name] = REFERENCE            # on request only: see REFERENCE
    wanted = names.split(",") if names else list(QUICK if quick else known)
    missing = [n for n in wanted if n not in known]
    if missing:
        raise ValueError(f"no such cell: {', '.join(missing)} (cells: {', '.join(known)})")
    return [known[n] for n in wanted]
