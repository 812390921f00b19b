"""Settings: every environment variable the service reads, in one typed object (12-factor).

Each variable is documented in the README with its default. Secrets are kept out of
``repr`` so a settings object can be logged safely.
"""

from __future__ import annotations

import os
from importlib import resources
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

DEFAULT_REALTIME_URL = "wss://api-platform.ope.ai/v1/realtime"
DEFAULT_REALTIME_MODEL = "opeai/AudioLLM/Voice2"


class SettingsError(ValueError):
    """A variable has a value we cannot use; the message names it (never its secret value)."""


def _bool(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, not {value!r}")


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {value!r}") from None


def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {value!r}") from None


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    if value < 0 or (value == 0 and not allow_zero):
        raise SettingsError(f"{name} must be {'zero or more' if allow_zero else 'more than zero'}, not {value!r}")
    return value


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _url(name: str, value: str) -> str | None:
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise SettingsError(f"{name} must start with https:// or http://, not {value!r}")
    return value.rstrip("/")


@dataclass(frozen=True)
class Settings:
    realtime_url: str = DEFAULT_REALTIME_URL
    realtime_model: str = DEFAULT_REALTIME_MODEL
    realtime_api_key: str = field(default="", repr=False)
    realtime_dialect: str = "beta"
    audio_codec: str = "pcm16"
    public_url: str | None = None
    agent_profile: str = ""
    host: str = "0.0.0.0"
    port: int = 8000
    log_level: str = "INFO"
    log_format: str = "text"
    web_concurrency: int = 1
    call_records_dir: Path | None = None
    metrics_token: str = field(default="", repr=False)
    twilio_account_sid: str = ""
    twilio_auth_token: str = field(default="", repr=False)
    twilio_from_number: str = ""
    twilio_api_base_url: str | None = None
    calls_api_token: str = field(default="", repr=False)
    forward_to_number: str = ""
    transcript_webhook_url: str | None = None
    # Security: webhook signatures and stream tokens.
    twilio_validate_signatures: bool = True
    stream_secret: str = field(default="", repr=False)
    stream_token_ttl_seconds: int = 60
    # Limits.
    max_concurrent_calls: int = 50
    max_message_bytes: int = 64 * 1024
    media_timeout_seconds: float = 10.0
    shutdown_grace_seconds: float = 25.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        get = lambda key, default="": (env.get(key) or default).strip()  # noqa: E731
        public_url = get("PUBLIC_URL").rstrip("/") or None
        if public_url and not public_url.startswith(("http://", "https://")):
            raise SettingsError(f"PUBLIC_URL must start with https:// or http://, not {public_url!r}")
        url = get("REALTIME_URL", DEFAULT_REALTIME_URL)
        if url != "local" and not url.startswith(("ws://", "wss://")):
            raise SettingsError(f"REALTIME_URL must be a ws:// or wss:// URL (or 'local'), not {url!r}")
        return cls(
            realtime_url=url,
            realtime_model=get("REALTIME_MODEL", DEFAULT_REALTIME_MODEL),
            realtime_api_key=get("REALTIME_API_KEY") or get("API_KEY"),
            realtime_dialect=_choice("REALTIME_DIALECT", get("REALTIME_DIALECT", "beta"), ("beta", "ga")),
            audio_codec=_choice("AUDIO_CODEC", get("AUDIO_CODEC", "pcm16"), ("pcm16", "g711_ulaw")),
            public_url=public_url,
            agent_profile=get("AGENT_PROFILE"),
            host=get("HOST", "0.0.0.0"),
            port=_int("PORT", get("PORT", "8000")),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            log_format=_choice("LOG_FORMAT", get("LOG_FORMAT", "text").lower(), ("text", "json")),
            web_concurrency=int(_positive("WEB_CONCURRENCY", _int("WEB_CONCURRENCY", get("WEB_CONCURRENCY", "1")))),
            call_records_dir=Path(get("CALL_RECORDS_DIR")) if get("CALL_RECORDS_DIR") else None,
            metrics_token=get("METRICS_TOKEN"),
            twilio_account_sid=get("TWILIO_ACCOUNT_SID"),
            twilio_auth_token=get("TWILIO_AUTH_TOKEN"),
            twilio_from_number=get("TWILIO_FROM_NUMBER"),
            twilio_api_base_url=_url("TWILIO_API_BASE_URL", get("TWILIO_API_BASE_URL")),
            calls_api_token=get("CALLS_API_TOKEN"),
            forward_to_number=get("FORWARD_TO_NUMBER"),
            transcript_webhook_url=_url("TRANSCRIPT_WEBHOOK_URL", get("TRANSCRIPT_WEBHOOK_URL")),
            twilio_validate_signatures=_bool("TWILIO_VALIDATE_SIGNATURES",
                                             get("TWILIO_VALIDATE_SIGNATURES", "true")),
            stream_secret=get("STREAM_SECRET"),
            stream_token_ttl_seconds=int(_positive(
                "STREAM_TOKEN_TTL_SECONDS", _int("STREAM_TOKEN_TTL_SECONDS", get("STREAM_TOKEN_TTL_SECONDS", "60")))),
            max_concurrent_calls=int(_positive(
                "MAX_CONCURRENT_CALLS", _int("MAX_CONCURRENT_CALLS", get("MAX_CONCURRENT_CALLS", "50")),
                allow_zero=True)),
            max_message_bytes=int(_positive(
                "MAX_MESSAGE_BYTES", _int("MAX_MESSAGE_BYTES", get("MAX_MESSAGE_BYTES", "65536")))),
            media_timeout_seconds=_positive(
                "MEDIA_TIMEOUT_SECONDS", _float("MEDIA_TIMEOUT_SECONDS", get("MEDIA_TIMEOUT_SECONDS", "10"))),
            shutdown_grace_seconds=_positive(
                "SHUTDOWN_GRACE_SECONDS", _float("SHUTDOWN_GRACE_SECONDS", get("SHUTDOWN_GRACE_SECONDS", "25")),
                allow_zero=True),
        )

    def secrets(self) -> list[str]:
        """Values that must never be printed (used to scrub logs)."""
        return [getattr(self, f.name) for f in fields(self) if not f.repr and getattr(self, f.name)]

    def profile_path(self) -> Path:
        """AGENT_PROFILE, else config/agent.toml here, else the copy installed with the package."""
        if self.agent_profile:
            return Path(self.agent_profile)
        local = Path("config/agent.toml")
        if local.is_file():
            return local
        return Path(str(resources.files("telephony").joinpath("profiles", "agent.toml")))
