"""Agent profiles: instructions, voice, greeting, VAD and transcription settings, as TOML data."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telephony.core import sip
from telephony.core.barge_in import BargeInError, BargeInPolicy, parse_settings
from telephony.core.function_tools import FunctionTool, McpServer, ToolDeclarationError, parse_tools
from telephony.core.tools import E164, REGISTRY, declarations
from telephony.wire.realtime import SessionConfig, Tool, TranscriptionConfig, TurnDetection

DEFAULT_FILLER_AFTER_MS = 1500


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
    voicemail: str = ""
    tool_names: tuple[str, ...] = ()
    transfer_targets: dict[str, str] = field(default_factory=dict)  # name → E.164 number or sip: URI
    name: str = "default"  # the file's stem; a call's "profile" stream parameter names it
    numbers: tuple[str, ...] = ()  # called numbers (E.164 or sip: URIs) this profile answers
    function_tools: tuple[FunctionTool, ...] = ()  # [[tools.http]] and [[tools.python]]
    mcp_servers: tuple[McpServer, ...] = ()  # [[tools.mcp]]
    filler_after_ms: int = DEFAULT_FILLER_AFTER_MS  # a tool slower than this: a holding phrase
    sip_headers: tuple[str, ...] = ()  # X- headers of a SIP caller the model may see
    sip_refer: bool = False  # on a SIP leg, transfer with <Refer><Sip> instead of <Dial>
    barge_in: BargeInPolicy = field(default_factory=BargeInPolicy)  # [barge_in]
    recording_enabled: bool = True  # [recording] enabled: recorded when RECORDINGS_URL is set
    recording_announce: str = ""  # [recording] announce: said by Twilio before the agent, when recorded

    def session_config(self, audio_format: str, instructions: str | None = None,
                       voice: str | None = None, extra_tools: tuple[Tool, ...] = ()) -> SessionConfig:
        """``extra_tools``: tools found at call time (those of MCP servers the bridge calls)."""
        function_tools = tuple(t.declaration() for t in self.function_tools)
        return SessionConfig(
            instructions=instructions or self.instructions, voice=voice or self.voice,
            audio_format=audio_format, turn_detection=self.turn_detection,
            transcription_model=self.transcription_model or None,
            tools=declarations(self) + function_tools + extra_tools,
            mcp_servers=tuple(s.remote() for s in self.mcp_servers if s.run_by == "provider"))

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
    tools_table = _table(data, "tools", path)
    tool_names = tuple(str(n) for n in tools_table.get("enabled", ()))
    unknown = [n for n in tool_names if n not in REGISTRY]
    if unknown:
        raise ProfileError(f"{path}: [tools] enabled names unknown tools {unknown}; known: {sorted(REGISTRY)}")
    targets = {str(k): str(v) for k, v in _table(data, "transfer", path).items()}
    bad = [f"{k} = {v!r} {error}" for k, v in targets.items() if (error := sip.transfer_target_error(v))]
    if bad:
        raise ProfileError(f"{path}: [transfer] {'; '.join(bad)}")
    try:
        function_tools, mcp_servers = parse_tools(tools_table, path, set(REGISTRY))
    except ToolDeclarationError as exc:
        raise ProfileError(str(exc)) from None
    filler_after_ms = tools_table.get("filler_after_ms", DEFAULT_FILLER_AFTER_MS)
    if isinstance(filler_after_ms, bool) or not isinstance(filler_after_ms, int) or filler_after_ms < 0:
        raise ProfileError(f"{path}: [tools] filler_after_ms must be a whole number of milliseconds")
    numbers = data.get("numbers", [])  # top level, before any table
    if not isinstance(numbers, list) or not all(isinstance(n, str) and _is_address(n) for n in numbers):
        raise ProfileError(f"{path}: numbers must be a list of E.164 numbers or sip: URIs")
    sip_headers, sip_refer = _sip_table(_table(data, "sip", path), path)
    recording = _table(data, "recording", path)
    unknown_keys = sorted(set(recording) - {"enabled", "announce"})
    if unknown_keys or not isinstance(recording.get("enabled", True), bool) \
            or not isinstance(recording.get("announce", ""), str):
        raise ProfileError(f"{path}: [recording] takes enabled (true or false) and announce (text)"
                           + (f"; unknown keys {unknown_keys}" if unknown_keys else ""))
    try:
        barge_in = BargeInPolicy(**parse_settings(_table(data, "barge_in", path), f"{path}: [barge_in]"))
    except BargeInError as exc:
        raise ProfileError(str(exc)) from None
    return Profile(
        name=path.stem,
        numbers=tuple(numbers),
        function_tools=function_tools,
        mcp_servers=mcp_servers,
        filler_after_ms=filler_after_ms,
        sip_headers=sip_headers,
        sip_refer=sip_refer,
        barge_in=barge_in,
        recording_enabled=recording.get("enabled", True),
        recording_announce=recording.get("announce", "").strip(),
        voicemail=str(agent.get("voicemail", "")).strip(),
        tool_names=tool_names,
        transfer_targets=targets,
        instructions=instructions,
        voice=str(agent.get("voice", "alloy")),
        greeting=str(agent.get("greeting", "")).strip(),
        fallback=str(agent.get("fallback", Profile.fallback)).strip(),
        turn_detection=td,
        transcription_model=str(transcription.get("model", "")).strip(),
        transcription_language=str(transcription.get("language", "")).strip(),
    )


def _is_address(value: str) -> bool:
    return bool(E164.fullmatch(value)) or (value.lower().startswith("sip:") and len(value) > 4)


def _sip_table(table: dict[str, Any], path: Path) -> tuple[tuple[str, ...], bool]:
    headers = table.get("headers", [])
    if not isinstance(headers, list) or not all(isinstance(h, str) for h in headers):
        raise ProfileError(f"{path}: [sip] headers must be a list of header names")
    bad = [h for h in headers if not sip.HEADER_NAME.match(h)]
    if bad:
        raise ProfileError(f"{path}: [sip] headers must be X- header names: {bad}")
    if len(headers) > sip.MAX_HEADERS:
        raise ProfileError(f"{path}: [sip] headers lists {len(headers)} names; at most {sip.MAX_HEADERS}")
    refer = table.get("refer", False)
    if not isinstance(refer, bool):
        raise ProfileError(f"{path}: [sip] refer must be true or false")
    return tuple(headers), refer
