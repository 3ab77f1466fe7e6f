"""Headless baresip (Debian ``baresip-core`` 1.0) softphones for end-to-end tests.

A peer sends a sine tone instead of a microphone (``ausine``, which only runs
at 48 kHz stereo), plays to ALSA's ``null`` device, and the ``sndfile`` module
dumps each call's audio to ``<dir>/dump/*-{enc,dec}.wav`` so a test can check
what it heard. SIP, RTP and the UDP console are bound to 127.0.0.1
(``net_interface``; without it baresip advertises another interface in SDP).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

MODULE_DIRS = (
    Path("/usr/lib/baresip/modules"),
    Path("/usr/lib/x86_64-linux-gnu/baresip/modules"),
    Path("/usr/local/lib/baresip/modules"),
)

MODULES = ("cons", "g711", "alsa", "ausine", "aufile", "sndfile")


def baresip_binary() -> str | None:
    return shutil.which("baresip")


def module_dir() -> Path | None:
    for directory in MODULE_DIRS:
        if (directory / "g711.so").is_file():
            return directory
    return None


def write_peer(
    directory: Path, *, sip_port: int, console_port: int, tone_hz: int, account: str
) -> Path:
    """A config dir for one peer; ``account`` is an accounts line, e.g.
    ``<sip:b@127.0.0.1:5060>;auth_pass=secret;answermode=auto;regint=60``."""
    modules = module_dir()
    if modules is None:
        raise FileNotFoundError("baresip modules (g711.so) not found")
    (directory / "dump").mkdir(parents=True, exist_ok=True)
    settings = [
        ("poll_method", "epoll"),
        ("net_interface", "127.0.0.1"),
        ("sip_listen", f"127.0.0.1:{sip_port}"),
        ("call_local_timeout", "30"),
        ("audio_player", "alsa,null"),
        ("audio_source", f"ausine,{tone_hz}"),
        ("audio_alert", "alsa,null"),
        ("audio_level", "no"),
        ("ausrc_srate", "48000"),
        ("auplay_srate", "48000"),
        ("ausrc_channels", "2"),
        ("auplay_channels", "2"),
        ("audio_buffer", "20-160"),
        ("rtp_stats", "yes"),
        ("module_path", str(modules)),
        *(("module", f"{name}.so") for name in MODULES),
        ("module_tmp", "uuid.so"),
        ("module_tmp", "account.so"),
        ("module_app", "menu.so"),
        ("cons_listen", f"127.0.0.1:{console_port}"),
        ("snd_path", str(directory / "dump")),
    ]
    (directory / "config").write_text("".join(f"{key}\t\t{value}\n" for key, value in settings))
    (directory / "accounts").write_text(account + "\n")
    return directory


class BaresipPeer:
    """One baresip process; it exits by itself after ``lifetime`` seconds (``-t``)."""

    def __init__(self, directory: Path, *, lifetime: int, commands: tuple[str, ...] = ()) -> None:
        binary = baresip_binary()
        if binary is None:
            raise FileNotFoundError("baresip not installed")
        self.directory = directory
        self.log_path = directory / "baresip.log"
        self._log = self.log_path.open("w")
        args = [binary, "-f", str(directory), "-t", str(lifetime)]
        for command in commands:
            args += ["-e", command]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> bool:
        """Whether ``text`` shows up in the log within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                return text in self.log()
            time.sleep(0.05)
        return False

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (baresip un-registers and hangs up), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.close()
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def received_audio(self) -> list[Path]:
        """The WAV files of what this peer decoded (heard), oldest first."""
        return sorted((self.directory / "dump").glob("*-dec.wav"))
