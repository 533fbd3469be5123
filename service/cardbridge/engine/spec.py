"""What a bridge is asked to be: the parameters the main process hands to a worker.

Plain data, used in the main process (manager, supervisor) and in the worker.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass
class BridgeSpec:
    device_id: str            # stable id
    pcm: str                  # ALSA PCM name, resolved and trusted by the service
    client_name: str          # JACK client name, already escaped
    capture: int | None = None    # channels; None = all the device has; 0 = direction off
    playback: int | None = None
    rate: int | None = None       # device rate; None = JACK's rate
    period: int = 256
    periods: int = 2
    max_periods: int = 4          # the card may get more periods after repeated dropouts
    quality: str = "medium"       # best|medium|fastest|linear
    jack_server: str | None = None
    learnt_ppm: float = 0.0       # the card's drift learnt by an earlier worker: start from it

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "BridgeSpec":
        return cls(**json.loads(text))
