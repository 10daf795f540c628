"""Aravis's simulated GigE Vision camera (`arv-fake-gv-camera-0.8 -i 127.0.0.1`) as a test fixture.

Only one simulated camera can answer on 127.0.0.1 (the GigE Vision control port is fixed), so each
test starts its own with a fresh serial number and stops it; `start` waits, deadline-bounded, until
Aravis opens a camera with THAT serial, so a stray camera from elsewhere is never mistaken for ours.
Aravis missing: skip on a developer's machine, fail under CI=true (tests/helpers/requires.py).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time

from edge_somad.runtime.pipeline.gige_spec import INSTALL_HINT
from tests.helpers.requires import missing_component

FAKE_EXE = "arv-fake-gv-camera-0.8"
ADDRESS = "127.0.0.1"
_serials = itertools.count()


def require_aravis() -> None:
    """Skip (or fail in CI) unless the simulated camera and Aravis's Python bindings are both here."""
    from edge_somad.errors import ConfigError
    from edge_somad.runtime.pipeline.gige import load_aravis

    if shutil.which(FAKE_EXE) is None:
        missing_component(f"{FAKE_EXE} (Debian package aravis-tools)", INSTALL_HINT)
    try:
        load_aravis()
    except ConfigError as exc:
        missing_component("Aravis / PyGObject", str(exc))


class FakeCamera:
    """One arv-fake-gv-camera-0.8 process; start() again after kill() brings the same camera back."""

    def __init__(self, lost_per_thousand: int = 0) -> None:
        self.serial = f"ES{os.getpid() % 10000:04d}{next(_serials):02d}"
        self.proc: subprocess.Popen | None = None
        self.lost = lost_per_thousand  # stream packets the camera drops (its -r option)

    def start(self, timeout_s: float = 20.0) -> None:
        from gi.repository import GLib

        from edge_somad.runtime.pipeline.gige import load_aravis

        aravis = load_aravis()
        self.proc = subprocess.Popen([FAKE_EXE, "-i", ADDRESS, "-s", self.serial, "-r", str(self.lost)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        last = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{FAKE_EXE} exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace') if self.proc.stderr else ''}")
            try:
                camera = aravis.Camera.new(ADDRESS)
                found = camera.get_device_id()
                del camera  # give the control channel back before the test opens it
                if found == self.serial:
                    return
                last = f"a camera {found!r} answers on {ADDRESS}, not ours ({self.serial}): stop it first"
            except GLib.Error as exc:
                last = exc.message
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"simulated camera {self.serial} not reachable within {timeout_s:g} s: {last}")

    def kill(self) -> None:
        """SIGKILL: the camera vanishes as an unplugged one does, without a goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
