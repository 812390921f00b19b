"""Measures a recorded call from its audio alone: who spoke when, and how fast the agent reacted.

Speech is found by 20 ms frame RMS. Two figures matter on a phone line:
- response latency: the caller stops speaking → the first agent audio the caller hears;
- barge-in stop time: the caller starts speaking over the agent → the agent's audio stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FRAME_S = 0.02
THRESHOLD_RMS = 300.0  # PCM16, for the caller: room noise in a recording sits below this
AGENT_THRESHOLD_RMS = 30.0  # the agent's channel is digital silence (0) between its audio
CALLER_GAP_S = 0.45  # pauses between words shorter than this do not end a caller turn


def frame_rms(x: np.ndarray, rate: int, frame_s: float = FRAME_S) -> np.ndarray:
    n = int(rate * frame_s)
    frames = x[: len(x) // n * n].astype(np.float64).reshape(-1, n)
    return np.sqrt((frames ** 2).mean(axis=1))


def spans(x: np.ndarray, rate: int, merge_gap_s: float = 0.0,
          threshold: float = THRESHOLD_RMS) -> list[tuple[float, float]]:
    """(start s, end s) of the stretches with sound, joining those closer than ``merge_gap_s``."""
    out: list[list[float]] = []
    for i in np.flatnonzero(frame_rms(x, rate) >= threshold):
        start, end = i * FRAME_S, (i + 1) * FRAME_S
        if out and start - out[-1][1] <= merge_gap_s + 1e-9:
            out[-1][1] = end
        else:
            out.append([start, end])
    return [(round(float(a), 3), round(float(b), 3)) for a, b in out]


@dataclass
class CallMeasurements:
    caller_turns: list[tuple[float, float]]
    agent_spans: list[tuple[float, float]]
    response_latencies: list[tuple[float, float]] = field(default_factory=list)  # (caller stopped at, s)
    barge_in_stops: list[tuple[float, float]] = field(default_factory=list)  # (caller started at, s)


def measure(caller: np.ndarray, agent: np.ndarray, rate: int) -> CallMeasurements:
    turns = spans(caller, rate, CALLER_GAP_S)
    agent_frames = frame_rms(agent, rate) >= AGENT_THRESHOLD_RMS  # soft onsets ("th…") count
    active = np.flatnonzero(agent_frames) * FRAME_S  # start time of each frame with agent audio
    m = CallMeasurements(turns, spans(agent, rate, threshold=AGENT_THRESHOLD_RMS))
    for k, (start, end) in enumerate(turns):
        # The agent was audible in the 100 ms before the caller began: that is a barge-in.
        if np.any((active >= start - 0.1) & (active < start)):
            during = active[(active >= start) & (active < end)]
            stopped = during[-1] + FRAME_S if len(during) else start
            m.barge_in_stops.append((start, round(float(stopped - start), 3)))
        next_start = turns[k + 1][0] if k + 1 < len(turns) else np.inf
        after = active[(active >= end) & (active < next_start)]
        if len(after):
            m.response_latencies.append((end, round(float(after[0] - end), 3)))
    return m
