"""Offline speech recognition of caller turns for the local Realtime engine.

``SphinxRecognizer`` runs pocketsphinx with the US-English model that its wheel ships (no
download at run time). pocketsphinx holds the GIL while it decodes (a whole sentence takes
0.3-1 s), which would stall the event loop that plays the call, so decoding runs in one worker
process; the caller of ``transcribe`` only waits on a pipe (the GIL is free meanwhile), and the
engine's shell calls it from a thread (the engine emits the transcript some ms after the commit,
as the real service does).

The model is 16 kHz wide-band and the phone line is 8 kHz: turns are resampled up, which keeps
the features in the model's range but cannot restore what the line cut off above 4 kHz, so
accuracy is that of a small recogniser on telephone audio: sentences come out roughly, short
words are often misheard. ``PlaceholderRecognizer`` is what runs without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import struct
import subprocess
import sys
import threading
from typing import BinaryIO, Protocol

import numpy as np
import soxr

MODEL_RATE = 16000  # pocketsphinx's en-us acoustic model
# Below this RMS (PCM16) a turn is silence or line hiss: no words, and no decode. pocketsphinx
# otherwise finds words in digital silence ("air", "rip"), which a real service would not.
QUIET_RMS = 100.0
# Backchannels the shipped dictionary lacks (it has "mhm", "uh-huh", "hmm", "yeah", "okay").
EXTRA_WORDS = {"mm-hmm": "M HH M"}


class Recognizer(Protocol):
    name: str
    slow: bool  # True: call ``transcribe`` off the event loop

    def transcribe(self, pcm: bytes, rate: int) -> str:
        """PCM16 mono at ``rate`` → the words heard, lower case ("" for none)."""
        ...


class PlaceholderRecognizer:
    """No recogniser: says how long the turn was, so a transcript is never mistaken for words."""

    name = "placeholder"
    slow = False

    def transcribe(self, pcm: bytes, rate: int) -> str:
        return f"[{len(pcm) / 2 / rate:.1f} s of caller speech]"


# --- The worker process's side ---

_decoder = None


def _load_decoder() -> None:
    """Runs once in the worker: loading the model takes ~0.7 s."""
    global _decoder
    from pocketsphinx import Decoder, set_loglevel

    set_loglevel("FATAL")  # it logs every utterance to stderr otherwise
    _decoder = Decoder(samprate=MODEL_RATE)
    for word, phones in EXTRA_WORDS.items():
        if _decoder.lookup_word(word) is None:
            _decoder.add_word(word, phones, True)


def _decode(pcm: bytes, rate: int) -> str:
    if _decoder is None:
        _load_decoder()
    x = np.frombuffer(pcm[: len(pcm) // 2 * 2], "<i2")
    if len(x) == 0:
        return ""
    if rate != MODEL_RATE:
        x = np.clip(np.rint(soxr.resample(x.astype(np.float32), rate, MODEL_RATE)), -32768, 32767).astype("<i2")
    _decoder.start_utt()
    _decoder.process_raw(x.tobytes(), full_utt=True)
    _decoder.end_utt()
    hyp = _decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


# --- This process's side ---

_HEADER = struct.Struct("<II")  # request: (rate, bytes of PCM); reply: (bytes of UTF-8 text, 0)


class SphinxRecognizer:
    """pocketsphinx in one worker process (``python -m telephony.offline.recognizer``), started on
    first use or by ``warm``, fed one turn at a time over its stdin/stdout.

    A plain subprocess rather than multiprocessing: spawn re-imports the parent's main module,
    which an app's entry point or a script need not be ready for."""

    name = "pocketsphinx en-us"
    slow = True

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one turn at a time on the pipe
        self._proc: subprocess.Popen | None = None

    def _worker(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-m", "telephony.offline.recognizer"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL)  # pocketsphinx logs every odd turn
        return self._proc

    def transcribe(self, pcm: bytes, rate: int) -> str:
        pcm = bytes(pcm[: len(pcm) // 2 * 2])
        if pcm and _rms(pcm) < QUIET_RMS:
            return ""
        with self._lock:
            proc = self._worker()
            try:
                proc.stdin.write(_HEADER.pack(rate, len(pcm)) + pcm)
                proc.stdin.flush()
                size, _ = _HEADER.unpack(_read_exactly(proc.stdout, _HEADER.size))
                return _read_exactly(proc.stdout, size).decode("utf-8")
            except (OSError, EOFError, struct.error):
                self._stop(proc)  # the next turn starts a fresh worker
                raise

    def warm(self) -> None:
        """Starts the worker and loads the model now, so the first turn does not wait ~1 s."""
        self.transcribe(b"", MODEL_RATE)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._stop(self._proc)

    def _stop(self, proc: subprocess.Popen) -> None:
        self._proc = None
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the worker exits at the end of its input
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x)))


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n) if n else b""
    if len(data) != n:
        raise EOFError("the recogniser worker went away")
    return data


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The worker's loop: a turn in, its words out, until stdin closes."""
    _load_decoder()
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        rate, size = _HEADER.unpack(header)
        text = _decode(_read_exactly(stdin, size), rate).encode("utf-8")
        stdout.write(_HEADER.pack(len(text), 0) + text)
        stdout.flush()


_shared: Recognizer | None = None
_shared_lock = threading.Lock()


def default_recognizer() -> Recognizer:
    """One recogniser for the process (its worker is shared by every call): pocketsphinx when it
    is installed, else the placeholder."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SphinxRecognizer() if sphinx_available() else PlaceholderRecognizer()
        return _shared


def sphinx_available() -> bool:
    return importlib.util.find_spec("pocketsphinx") is not None


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
