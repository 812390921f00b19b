"""Offline speech recognition of caller turns for the local Realtime engine.

``SphinxRecognizer`` runs pocketsphinx with the US-English model that its wheel ships (no
download at run time). pocketsphinx holds the GIL while it decodes (a whole sentence takes
0.3-1 s), which would stall the event loop that plays the call, so decoding runs in one worker
process; the caller of ``transcribe`` only waits on a pipe, and the engine's shell calls it from
a thread (the engine emits the transcript some ms after the commit, as the real service does).

The model is 16 kHz wide-band and the phone line is 8 kHz: turns are resampled up, which keeps
the features in the model's range but cannot restore what the line cut off above 4 kHz, so
accuracy is that of a small recogniser on telephone audio: sentences come out roughly, short
words are often misheard. ``PlaceholderRecognizer`` is what runs without it.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

import numpy as np
import soxr

MODEL_RATE = 16000  # pocketsphinx's en-us acoustic model
TIMEOUT_S = 30.0  # a turn is at most ~30 s (the engine's MAX_TURN_S) and decodes faster than real time
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


class SphinxRecognizer:
    """pocketsphinx in one worker process, started on first use (or by ``warm``)."""

    name = "pocketsphinx en-us"
    slow = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the parent runs an event loop and threads that a fork would copy.
                self._pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"),
                                                 initializer=_load_decoder)
            return self._pool

    def transcribe(self, pcm: bytes, rate: int) -> str:
        try:
            return self._executor().submit(_decode, bytes(pcm), rate).result(TIMEOUT_S)
        except BrokenProcessPool:
            self.close()  # the next turn starts a fresh worker
            raise

    def warm(self) -> None:
        """Starts the worker and loads the model now, so the first turn does not wait ~1 s."""
        self.transcribe(b"", MODEL_RATE)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


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
