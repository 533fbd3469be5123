"""Entry point of the `cardbridge` console script (runs in the user's shell process).

Everything is wrapped: a failure is one line on stderr (`cardbridge: error: …`) with the
documented exit code, Ctrl-C exits 130 quietly, and no traceback ever reaches the user.
"""

from __future__ import annotations

import asyncio
import os
import sys

from . import arguments, failures
from .failures import CliError


def _error(message: str) -> None:
    try:
        sys.stderr.write(f"{arguments.PROG}: error: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


def run(argv: list[str] | None = None) -> int:
    """Parse, run, and map every outcome to an exit code (never raises, except SystemExit)."""
    try:
        args = arguments.parse(argv)
        from . import commands                      # after parsing: --help stays fast
        return asyncio.run(commands.run(args))
    except CliError as exc:
        _error(exc.message)
        return exc.code
    except KeyboardInterrupt:
        return failures.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`cardbridge devices | head -1`): stop quietly.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except Exception:
            pass
        return failures.FAILED
    except SystemExit:
        raise
    except BaseException as exc:  # a bug: still one line, never a traceback
        detail = " ".join(str(exc).split())
        _error(f"internal error: {type(exc).__name__}" + (f": {detail}" if detail else ""))
        return failures.FAILED


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
