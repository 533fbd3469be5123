"""cardbridge: drift-locked ALSA cards as JACK port sets, driven over D-Bus.

Import-only module; no thread of its own.
"""

__version__ = "0.1.0"
