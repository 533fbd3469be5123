"""The files in docs/: the man pages cardbridged(8) and cardbridge.toml(5) render without
warnings and document every option and every setting the code knows (and none it does not);
the shipped config.toml changes nothing when every line is uncommented.

Runs in the pytest process; `man` renders the pages.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from cardbridge import config, daemon

DOCS = Path(__file__).resolve().parent.parent / "docs"


def plain(page: str) -> str:
    """The page as man shows it, hyphens and all (hyphenation at line ends turned off)."""
    out = subprocess.run(["man", "-l", "-Tutf8", "--nh", "--nj", str(DOCS / page)],
                         capture_output=True, text=True, timeout=30,
                         env={"MANWIDTH": "200", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert out.returncode == 0, out.stderr
    return re.sub(r".\x08", "", out.stdout).replace("‐", "-")


@pytest.mark.parametrize("page", ["cardbridged.8", "cardbridge.toml.5"])
def test_man_page_renders_without_warnings(page):
    out = subprocess.run(["man", "--warnings", "-l", "-Tutf8", str(DOCS / page)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_cardbridged_8_documents_every_option():
    text = plain("cardbridged.8")
    parser = daemon.build_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings}
    for flag in flags:
        assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", text), flag
    documented = set(re.findall(r"^\s{7}(--[a-z-]+)", text, re.M))
    assert documented <= flags, documented - flags
    choices = next(a.choices for a in parser._actions if "--log-level" in a.option_strings)
    for level in choices:
        assert level in text


def test_cardbridge_toml_5_documents_every_setting_with_its_default_and_limits():
    text = plain("cardbridge.toml.5")
    keys = {"auto_attach", "hotplug", "pcm", "attach", *config.BRIDGE_KEYS, *config.DEFAULT_KEYS}
    for key in keys:
        assert re.search(rf"\b{key}\b", text), key
    documented = set(re.findall(r"^\s{7}([a-z_]+) =", text, re.M))
    assert documented <= keys, documented - keys
    defaults = config.Config()
    for key in ("auto_attach", "hotplug", *config.DEFAULT_KEYS):
        value = getattr(defaults, key)
        shown = f'"{value}"' if isinstance(value, str) else str(value).lower()
        assert f"{key} = {shown}" in text, key
    for key, (lo, hi) in config.LIMITS.items():
        assert f"{lo} to {hi}" in text, key
    for choice in (*config.AUTO_ATTACH, *config.names.QUALITIES):
        assert choice in text


def test_shipped_config_changes_nothing_and_its_lines_are_valid():
    text = (DOCS / "config.toml").read_text()
    assert config.parse_config(text) == config.Config()
    # uncommented, every line is a valid setting, and the top level shows the defaults
    uncommented = re.sub(r"^#(?=[\[a-z])", "", text, flags=re.M)
    parsed = config.parse_config(uncommented)
    defaults = config.Config()
    for field in fields(config.Config):
        if field.name in ("auto_attach", "hotplug", *config.DEFAULT_KEYS):
            assert getattr(parsed, field.name) == getattr(defaults, field.name), field.name
    assert parsed.devices and parsed.profiles
