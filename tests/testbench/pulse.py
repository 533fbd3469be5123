"""A real PulseAudio (Debian's `pulseaudio`) holding one ALSA card, confined to a test.

Runs in the process that builds the sandbox; the daemon is a child process, stopped by PID. It
gets a private HOME and XDG_RUNTIME_DIR (nobody else's clients find it), the private session bus
it is given (where it takes the card's org.freedesktop.ReserveDevice1 reservation, as on a
desktop), no autospawn, no shared memory, and a minimal configuration: one
`module-alsa-sink` on `hw:N` (with the test's ALSA configuration, a virtual card) and its native
protocol socket. PulseAudio reserves the card with priority 0 as "PulseAudio Sound Server",
hands it over (suspending its sink) to a higher priority, and takes it back when it is freed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .procs import SandboxError, record_started, terminate

APPLICATION_NAME = "PulseAudio Sound Server"


def available() -> bool:
    return shutil.which("pulseaudio") is not None


class PulseAudio:
    def __init__(self, env: dict, card: int, log_path: Path):
        """`env` carries DBUS_SESSION_BUS_ADDRESS and ALSA_CONFIG_PATH."""
        self.card = card
        self.log_path = Path(log_path)
        self.dir = Path(tempfile.mkdtemp(prefix="cardbridge-pulse-"))
        runtime = self.dir / "run"
        runtime.mkdir(mode=0o700)
        self.env = dict(env, HOME=str(self.dir), XDG_RUNTIME_DIR=str(runtime),
                        PULSE_RUNTIME_PATH=str(runtime / "pulse"))
        self.env.pop("PULSE_SERVER", None)
        (self.dir / "default.pa").write_text(
            f"load-module module-alsa-sink device=hw:{card} sink_name=card{card} mmap=no "
            "tsched=no\nload-module module-native-protocol-unix\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PulseAudio":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1",
                 "--use-pid-file=no", "--disable-shm=yes", "--system=no",
                 "-F", str(self.dir / "default.pa"), "--log-target=stderr", "--log-level=info"],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        record_started(self.proc, "pulseaudio", f"PulseAudio on hw:{self.card} in {self.dir}",
                       cleanup=self._remove_dir)
        return self

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise SandboxError(f"pulseaudio exited; its log:\n{self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        terminate(self.proc, 10)
        self._remove_dir()

    def _remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
