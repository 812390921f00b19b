"""A live console view of a simulated call: a timeline as it happens, a progress line, a summary."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any, TextIO

from telephony.offline.call_analysis import CallMeasurements
from telephony.offline.simulator import CallSimulator, TimelineEntry

PROGRESS_S = 0.1


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class CallConsole:
    """Prints one line per event, with seconds since the stream started.

    Sources: the simulator's timeline (what the caller heard), the caller's own speech (known
    from the recording being played), and, when the engine is in-process, what it was told.
    On a terminal a progress line is kept at the bottom.
    """

    def __init__(self, out: TextIO | None = None, progress: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.progress = self.out.isatty() if progress is None else progress
        self._sim: CallSimulator | None = None
        self._limit_s = 0.0
        self._tasks: list[asyncio.Task] = []
        self._status_shown = False

    # --- sources ---

    def attach(self, sim: CallSimulator, caller_turns: list[tuple[float, float]]) -> None:
        """Starts following a call about to run."""
        self._sim = sim
        self._limit_s = sim.duration_s
        self._tasks.append(asyncio.create_task(self._follow(sim)))
        self._tasks.append(asyncio.create_task(self._caller(caller_turns)))
        if self.progress:
            self._tasks.append(asyncio.create_task(self._progress()))

    def engine_event(self, direction: str, event: dict[str, Any]) -> None:
        """Observer for the in-process engine (``local_connector(observer=…)``)."""
        kind = event.get("type")
        if direction == "client" and kind == "conversation.item.truncate":
            self.line("bridge", f"truncate {event.get('item_id')} at {event.get('audio_end_ms')} ms "
                                "(what the caller heard)")
        elif direction == "client" and kind == "response.cancel":
            self.line("bridge", "response.cancel")
        elif direction == "client" and kind == "conversation.item.delete":
            self.line("bridge", f"delete {event.get('item_id')} (the caller heard none of it)")
        elif direction == "server" and kind == "conversation.item.input_audio_transcription.completed":
            self.line("engine", f'caller said: "{_clip(event.get("transcript") or "")}" (offline recogniser)')
        elif direction == "server" and kind == "error":
            self.line("engine", f"error: {(event.get('error') or {}).get('message')}")
        elif direction == "server" and kind == "input_audio_buffer.speech_started":
            self.line("engine", f"VAD: caller speech started at {event.get('audio_start_ms')} ms of input")
        elif direction == "server" and kind == "input_audio_buffer.speech_stopped":
            self.line("engine", "VAD: caller turn ended")
        elif direction == "server" and kind == "response.created":
            self.line("engine", f"response {event['response']['id']} started")
        elif direction == "server" and kind == "response.done":
            response = event["response"]
            reason = (response.get("status_details") or {}).get("reason")
            said = next((c.get("transcript") for item in response.get("output") or []
                         for c in item.get("content") or [] if c.get("transcript")), "")
            self.line("engine", f"response {response['id']} {response['status']}"
                                + (f" ({reason})" if reason else "") + (f': "{_clip(said)}"' if said else ""))

    async def _follow(self, sim: CallSimulator) -> None:
        while True:
            entry: TimelineEntry = await sim.events.get()
            if entry.kind == "agent_audio_start":
                self.line("caller", "hears the agent", entry.t)
            elif entry.kind == "agent_audio_stop":
                self.line("caller", "agent audio stops", entry.t)
            elif entry.kind == "clear":
                self.line(sim.carrier, f"BARGE-IN: clear, {entry.detail['dropped_ms']:.0f} ms of queued agent "
                                       f"audio dropped after {entry.detail['played_ms']:.0f} ms played", entry.t)
            elif entry.kind == "caller_audio_end":
                self.line("caller", "recording finished; listening", entry.t)

    async def _caller(self, turns: list[tuple[float, float]]) -> None:
        assert self._sim is not None
        await self._sim.started.wait()
        for start, end in turns:
            for t, what in ((start, "starts speaking"), (end, "stops speaking")):
                while (delay := t - self._sim.elapsed()) > 0:
                    await asyncio.sleep(delay)
                self.line("caller", what, t)

    async def _progress(self) -> None:
        assert self._sim is not None
        await self._sim.started.wait()
        while True:
            self._status()
            await asyncio.sleep(PROGRESS_S)

    # --- output ---

    def line(self, who: str, what: str, t: float | None = None) -> None:
        if t is None:
            t = self._sim.elapsed() if self._sim is not None and self._sim.started.is_set() else 0.0
        self._erase_status()
        print(f"{t:6.2f} s  {who:<10} {what}", file=self.out, flush=True)
        if self.progress:
            self._status()

    def _status(self) -> None:
        if self._sim is None or not self._sim.started.is_set():
            return
        t = max(0.0, self._sim.elapsed())
        width = 30
        done = min(width, int(width * t / max(self._limit_s, 1e-6)))
        self.out.write(f"\r  [{'#' * done}{'.' * (width - done)}] {t:5.1f} s (at most {self._limit_s:.0f} s)")
        self.out.flush()
        self._status_shown = True

    def _erase_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\033[K")
            self._status_shown = False

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._erase_status()

    def summary(self, m: CallMeasurements, heard_ms: list[int] | None = None,
                clears: list[float] | None = None) -> None:
        print("\nMeasured from the recording (20 ms frames):", file=self.out)
        for started, stop_s in m.barge_in_stops:
            print(f"  barge-in at {started:5.2f} s → agent audio stopped after {stop_s * 1000:4.0f} ms",
                  file=self.out)
            clear = next((c for c in clears or [] if c >= started - 0.05), None)
            if clear is not None:  # the sound can stop earlier, in a pause between words
                carrier = self._sim.label if self._sim is not None else "the carrier"
                print(f"    (and {carrier} was told to clear its buffer {(clear - started) * 1000:.0f} ms after "
                      "the caller began)", file=self.out)
        for stopped, latency in m.response_latencies:
            print(f"  caller stopped at {stopped:5.2f} s → first agent audio after {latency * 1000:4.0f} ms"
                  " (includes the VAD's end-of-turn silence)", file=self.out)
        if not m.barge_in_stops:
            print("  no barge-in: the caller never talked over the agent", file=self.out)
        if not m.response_latencies:
            print("  the agent did not answer after the caller's last turn", file=self.out)
        for ms in heard_ms or []:
            print(f"  the model was told the caller heard {ms} ms of the interrupted answer", file=self.out)
