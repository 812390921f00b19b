"""An energy VAD with hysteresis on the caller's μ-law frames, sans-I/O.

Live sends no speech events, so the bridge hears the caller itself: speech starts after
``START_FRAMES`` consecutive frames louder than ``START_RMS`` (a click is one frame) and ends
after ``STOP_MS`` below ``STOP_RMS`` (two thresholds, so a voice hovering near one does not
flap). The same scheme as the local engine's VAD, in PCM16 RMS units.
"""

from __future__ import annotations

import base64
import binascii

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

from telephony.core.audio import ULAW_BYTES_PER_MS

START_RMS = 500
STOP_RMS = 250
START_FRAMES = 2  # 40 ms of 20 ms frames
STOP_MS = 300.0


class EnergyVad:
    def __init__(self, start_rms: float = START_RMS, stop_rms: float = STOP_RMS) -> None:
        self.start_rms, self.stop_rms = start_rms, stop_rms
        self.speaking = False
        self._loud = 0  # consecutive loud frames while quiet
        self._quiet_ms = 0.0  # quiet so far while speaking

    def feed(self, payload: str) -> bool | None:
        """One base64 μ-law frame: True when speech starts, False when it ends, else None."""
        try:
            ulaw = base64.b64decode(payload)
        except (binascii.Error, ValueError):
            return None
        rms = audioop.rms(audioop.ulaw2lin(ulaw, 2), 2)
        if not self.speaking:
            self._loud = self._loud + 1 if rms >= self.start_rms else 0
            if self._loud >= START_FRAMES:
                self.speaking, self._loud, self._quiet_ms = True, 0, 0.0
                return True
            return None
        self._quiet_ms = 0.0 if rms >= self.stop_rms else self._quiet_ms + len(ulaw) / ULAW_BYTES_PER_MS
        if self._quiet_ms >= STOP_MS:
            self.speaking = False
            return False
        return None
