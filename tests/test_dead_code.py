"""No dead code in the product: vulture over the service and the CLI (with the tests, the test
bench and the benchmarks as their users), less the names tests/deadcode_whitelist.py explains.

Runs vulture in a child process of the pytest process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("service/", "clients/")


def test_no_unused_code_in_the_service_or_the_cli():
    pytest.importorskip("vulture")
    out = subprocess.run(
        [sys.executable, "-m", "vulture", "service", "clients", "tests", "benchmarks",
         "tests/deadcode_whitelist.py", "--min-confidence", "60",
         "--exclude", "*.egg-info,*/_rtcore*"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    found = [line for line in out.stdout.splitlines() if line.startswith(PRODUCT)]
    assert not found, "\n".join(found)
