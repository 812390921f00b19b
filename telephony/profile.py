"""Agent profiles: instructions, voice, greeting, VAD and transcription settings, as TOML data."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .realtime import SessionConfig, Tool, TranscriptionConfig, TurnDetection


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Profile:
    instructions: str
    voice: str = "alloy"
    greeting: str = ""
    fallback: str = "Sorry, the assistant is unavailable right now. Goodbye."
    turn_detection: TurnDetection = field(default_factory=TurnDetection)
    transcription_model: str = ""
    transcription_language: str = ""
    tools: tuple[Tool, ...] = ()

    def session_config(self, audio_format: str) -> SessionConfig:
        return SessionConfig(
            instructions=self.instructions, voice=self.voice, audio_format=audio_format,
            turn_detection=self.turn_detection,
            transcription_model=self.transcription_model or None, tools=self.tools)

    def transcription_config(self, audio_format: str = "pcm16") -> TranscriptionConfig:
        return TranscriptionConfig(model=self.transcription_model or "whisper-1",
                                   audio_format=audio_format,
                                   language=self.transcription_language or None,
                                   turn_detection=self.turn_detection)


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ProfileError(f"{path}: [{key}] must be a table")
    return value


def load_profile(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"agent profile {path} does not exist (set AGENT_PROFILE)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    agent = _table(data, "agent", path)
    vad = _table(data, "turn_detection", path)
    transcription = _table(data, "transcription", path)
    instructions = str(agent.get("instructions", "")).strip()
    if not instructions:
        raise ProfileError(f"{path}: [agent] instructions is required")
    try:
        td = TurnDetection(threshold=float(vad.get("threshold", 0.5)),
                           prefix_padding_ms=int(vad.get("prefix_padding_ms", 300)),
                           silence_duration_ms=int(vad.get("silence_duration_ms", 500)))
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: [turn_detection] {exc}") from None
    return Profile(
        instructions=instructions,
        voice=str(agent.get("voice", "alloy")),
        greeting=str(agent.get("greeting", "")).strip(),
        fallback=str(agent.get("fallback", Profile.fallback)).strip(),
        turn_detection=td,
        transcription_model=str(transcription.get("model", "")).strip(),
        transcription_language=str(transcription.get("language", "")).strip(),
    )
