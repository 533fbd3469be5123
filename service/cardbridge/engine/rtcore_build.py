"""cffi build script of `cardbridge.engine._rtcore`: the compiled real-time core of a bridge worker.

Runs at build time only (setup.py cffi_modules), as a plain script. The C sources live in csrc/:
rtcore.h declares what Python sees (cffi's cdef reads it as it is), jackcore.c is the JACK side
(process, latency and xrun callbacks; JACK's threads, no GIL) and periodpath.c the ALSA thread's
per-period work (sample formats, libsamplerate, the rings).
"""

import os

import cffi

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")


def _read(name: str) -> str:
    with open(os.path.join(CSRC, name), encoding="utf-8") as f:
        return f.read()


ffibuilder = cffi.FFI()
ffibuilder.cdef(_read("rtcore.h"))
ffibuilder.set_source(
    "cardbridge.engine._rtcore", '#include <stdint.h>\n#include "rtcore.h"\n',
    sources=[os.path.relpath(os.path.join(CSRC, name)) for name in ("jackcore.c", "periodpath.c")],
    include_dirs=[os.path.relpath(CSRC)], libraries=["jack", "m", "dl"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
