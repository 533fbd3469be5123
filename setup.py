"""Build hook: compiles the real-time core (cffi, API mode) next to the pure-Python package."""
from setuptools import setup

setup(cffi_modules=["service/cardbridge/engine/rtcore_build.py:ffibuilder"])
