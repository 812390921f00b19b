"""Regenerates telephony/offline/assets/demo-caller.wav (needs espeak-ng). Run from the repository root.

The caller waits 1.4 s (long enough to hear the greeting start), then talks over it, then
stops so the agent can answer. 8 kHz mono 16-bit, a few seconds: small enough to ship.
"""

import io
import subprocess
import wave

import numpy as np
import soxr

TEXT = "Hi, sorry to cut in. Could I book a table for two at seven tonight?"
LEAD_S, TAIL_S = 1.4, 0.3

wav = subprocess.run(["espeak-ng", "--stdout", "-v", "en-us+f3", "-s", "160", TEXT],
                     capture_output=True, check=True).stdout
with wave.open(io.BytesIO(wav)) as w:
    rate, raw = w.getframerate(), w.readframes(w.getnframes())
speech = soxr.resample(np.frombuffer(raw, "<i2").astype(np.float32), rate, 8000)
loud = np.flatnonzero(np.abs(speech) > 300)
speech = speech[loud[0]:loud[-1] + 1]  # espeak pads both ends with silence; we set our own
pcm = np.concatenate([np.zeros(int(8000 * LEAD_S)), speech, np.zeros(int(8000 * TAIL_S))])
with wave.open("telephony/offline/assets/demo-caller.wav", "wb") as out:
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(8000)
    out.writeframes(np.clip(np.rint(pcm), -32768, 32767).astype("<i2").tobytes())
print(f"{len(pcm) / 8000:.2f} s")
