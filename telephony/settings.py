"""Settings: every environment variable the service reads, in one typed object (12-factor).

Each variable is documented in the README with its default; its name is the field's in capitals.
``Settings.from_env()`` reads the environment, ``Settings(...)`` takes only what it is given (tests
stay hermetic). Secrets are kept out of ``repr`` and out of every error message.
"""

from __future__ import annotations

import base64
import binascii
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_REALTIME_URL = "wss://api-platform.ope.ai/v1/realtime"
DEFAULT_REALTIME_MODEL = "opeai/AudioLLM/Voice2"
# REALTIME_DIALECT=live changes the defaults it needs: OpenAI's Live endpoint and model, and
# μ-law passthrough (Twilio's own format, which Live accepts as is).
LIVE_DEFAULTS = {"realtime_url": "wss://api.openai.com/v1/live/sessions", "realtime_model": "gpt-live-1",
                 "audio_codec": "g711_ulaw"}
OPENAI_HOST = "api.openai.com"  # where REALTIME_API_KEY is OpenAI's own key (and may serve its SIP route)


class SettingsError(ValueError):
    """A variable has a value we cannot use; the message names it (never its secret value)."""


def _http_url(value: str | None) -> str | None:
    """An optional http(s) base URL, without its trailing slash."""
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with https:// or http://")
    return value.rstrip("/")


HttpUrl = Annotated[str | None, BeforeValidator(_http_url)]
Lowercase = BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)


def _speaks_only_ga(url: str) -> bool:
    """A Realtime endpoint that refuses the beta shape: OpenAI's (beta_api_shape_disabled since May
    2026) and Azure OpenAI's GA path (/openai/v1/). Unset, REALTIME_DIALECT follows the URL there:
    the default ``beta`` would fail every call. An explicit REALTIME_DIALECT is always kept."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host == "api.openai.com":
        return parts.path.rstrip("/").endswith("/realtime")
    return host.endswith((".openai.azure.com", ".cognitiveservices.azure.com")) and "/openai/v1/" in parts.path


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_by_name=True,
                                      str_strip_whitespace=True)

    # The Realtime provider.
    realtime_url: str = DEFAULT_REALTIME_URL
    realtime_model: str = DEFAULT_REALTIME_MODEL
    realtime_api_key: str = Field("", repr=False, validation_alias=AliasChoices("realtime_api_key", "api_key"))
    realtime_dialect: Annotated[Literal["beta", "ga", "live"], Lowercase] = "beta"
    audio_codec: Literal["pcm16", "g711_ulaw"] = "pcm16"  # live: g711_ulaw unless set
    live_delegation_model: str = "gpt-5-mini"  # live: the Responses model that runs the tools
    # The service.
    public_url: HttpUrl = None
    agent_profile: str = ""
    host: str = "0.0.0.0"
    port: int = 8000
    log_level: Annotated[str, BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)] = "INFO"
    log_format: Annotated[Literal["text", "json"], Lowercase] = "text"
    web_concurrency: int = Field(1, gt=0)
    # Addresses whose X-Forwarded-For/-Proto uvicorn trusts (comma-separated; "*": any peer, right
    # where only the platform's router can reach the service, as on Heroku).
    forwarded_allow_ips: str = "127.0.0.1"
    call_records_dir: Path | None = None
    # Call history: no URL is SQLite in ./telephony.sqlite3; sqlite:///path, postgresql:// or postgres://.
    database_url: str = Field("", repr=False)
    call_history: bool = True  # false: no database at all (GET /calls/{sid} answers 503)
    # Recordings of what each side heard: file:///dir or s3://bucket/prefix (AWS_* as the SDKs read them).
    recordings_url: str = ""
    metrics_token: str = Field("", repr=False)
    # Traces (ops/tracing.py): on when either is set; OTLP over HTTP. The SDK reads its other
    # OTEL_* variables (headers, timeout, service name, batching) itself.
    otel_exporter_otlp_endpoint: HttpUrl = None  # the collector's base URL: spans go to /v1/traces under it
    otel_exporter_otlp_traces_endpoint: HttpUrl = None  # the full URL for spans, if not the above's
    # Twilio.
    twilio_account_sid: str = ""
    twilio_auth_token: str = Field("", repr=False)
    twilio_from_number: str = ""
    twilio_api_base_url: HttpUrl = None
    calls_api_token: str = Field("", repr=False)
    dashboard_session_hours: float = Field(12.0, gt=0, le=24 * 30)  # a dashboard sign-in lasts this long
    forward_to_number: str = ""
    transcript_webhook_url: HttpUrl = None
    # Telnyx (TeXML inbound, Call Control outbound and in-call control).
    telnyx_api_key: str = Field("", repr=False)
    telnyx_public_key: str = ""  # base64 Ed25519 key that signs Telnyx's webhooks (public: not a secret)
    telnyx_connection_id: str = ""  # the Call Control application outbound calls are placed on
    telnyx_api_base_url: HttpUrl = None  # default https://api.telnyx.com (tests: a loopback fake)
    telnyx_validate_signatures: bool = True  # false: /telnyx/* serves unsigned webhooks (development only)
    # SignalWire (Compatibility API: cXML webhooks, Twilio-shaped media streams, LaML REST).
    signalwire_project_id: str = ""
    signalwire_token: str = Field("", repr=False)  # the project's API token (REST)
    signalwire_signing_key: str = Field("", repr=False)  # signs SignalWire's webhooks
    signalwire_space_url: HttpUrl = None  # https://<space>.signalwire.com (tests: a loopback fake)
    signalwire_validate_signatures: bool = True  # false: /signalwire/* serves unsigned webhooks (development only)
    # Plivo (Plivo XML <Stream> inbound, REST outbound and in-call control).
    plivo_auth_id: str = ""
    plivo_auth_token: str = Field("", repr=False)  # signs Plivo's webhooks (V3) and authorises its REST API
    plivo_api_base_url: HttpUrl = None  # default https://api.plivo.com (tests: a loopback fake)
    plivo_validate_signatures: bool = True  # false: /plivo/* serves unsigned webhooks (development only)
    # Vonage (Voice API: NCCO answers, L16 16 kHz websockets, REST with application JWTs).
    vonage_application_id: str = ""
    vonage_private_key: Path | None = None  # the application's private key (PEM file): signs REST JWTs
    vonage_signature_secret: str = Field("", repr=False)  # signs Vonage's webhooks (HS256 JWTs)
    vonage_api_base_url: HttpUrl = None  # default https://api.nexmo.com (tests: a loopback fake)
    vonage_validate_signatures: bool = True  # false: /vonage/* serves unsigned webhooks (development only)
    # OpenAI's SIP route (POST /openai/sip): OpenAI answers SIP calls, we steer them.
    openai_webhook_secret: str = Field("", repr=False)
    openai_api_key: str = Field("", repr=False)  # OpenAI's key: never another provider's
    openai_base_url: HttpUrl = None  # default https://api.openai.com/v1; the sideband follows it
    openai_sip_model: str = "gpt-realtime"
    # Security: webhook signatures and stream tokens.
    twilio_validate_signatures: bool = True
    stream_secret: str = Field("", repr=False)
    stream_token_ttl_seconds: int = Field(60, gt=0)
    tools_secret: str = Field("", repr=False)  # signs HTTP tool requests (Standard Webhooks)
    tool_threads: int = Field(4, gt=0)  # sync Python tools' own threads (a timed-out one holds its thread)
    # Limits.
    max_concurrent_calls: int = Field(50, ge=0)
    max_message_bytes: int = Field(64 * 1024, gt=0)
    media_timeout_seconds: float = Field(10.0, gt=0)
    shutdown_grace_seconds: float = Field(25.0, ge=0)
    shutdown_flush_seconds: float = Field(3.0, ge=0)  # after the calls: transcripts still queued are sent
    max_total_calls: int = Field(0, ge=0)
    # Shared state across instances (Heroku Key-Value Store sets it).
    redis_url: str = Field("", repr=False)
    redis_timeout_seconds: float = Field(0.3, gt=0)  # each operation on a call's path; then Redis is skipped
    handoff_ttl_seconds: int = Field(120, gt=0)
    # Without REDIS_URL: where SIP calls left by a stopping instance wait for it to come back. In the
    # working directory by default (as the call history's SQLite file), so that a single instance
    # re-attaches to its calls after a restart without being told where; nothing is written there
    # until a call is parked.
    state_dir: Path | None = Path("telephony-state")  # None (in code): calls are hung up at shutdown
    stream_start_timeout_seconds: float = Field(5.0, gt=0)
    max_pending_streams: int = Field(0, ge=0)  # 0: as many as MAX_CONCURRENT_CALLS (50 if that is 0)
    http_request_timeout_seconds: float = Field(5.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _trimmed_and_blank_means_default(cls, data: Any) -> Any:
        # Values are trimmed, and `FOO=` or `FOO="  "` in an env file means "not set", as it always has.
        if isinstance(data, dict):
            data = {k: v.strip() if isinstance(v, str) else v for k, v in data.items()}
            data = {k: v for k, v in data.items() if v != ""}
            if str(data.get("realtime_dialect", "")).lower() == "live":
                data = {**LIVE_DEFAULTS, **data}
            elif "realtime_dialect" not in data and _speaks_only_ga(str(data.get("realtime_url", ""))):
                data = {**data, "realtime_dialect": "ga"}
        return data

    @field_validator("recordings_url")
    @classmethod
    def _recordings_url(cls, value: str) -> str:
        if value and not value.startswith(("file:///", "s3://")):
            raise ValueError("must be file:///dir or s3://bucket/prefix")
        return value

    @field_validator("telnyx_public_key")
    @classmethod
    def _telnyx_public_key(cls, value: str) -> str:
        try:
            if value and len(base64.b64decode(value, validate=True)) != 32:
                raise ValueError
        except (binascii.Error, ValueError):
            raise ValueError("must be the base64 Ed25519 public key (32 bytes) from Telnyx's portal") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if value:
            # The client's own parser, so a URL it would refuse at the first call stops the service
            # at start instead (its messages name the part, never the password).
            from redis.connection import parse_url

            try:
                parse_url(value)
            except ValueError as exc:
                raise ValueError(f"not a URL the redis client accepts: {exc}") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        from telephony.history.database import DatabaseUrlError, database_for

        try:
            database_for(value)  # a URL the service could not use stops it at start, not at the first call
        except DatabaseUrlError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("tools_secret")
    @classmethod
    def _tools_secret(cls, value: str) -> str:
        if value.startswith("whsec_"):  # Standard Webhooks' form: base64 after the prefix
            import base64
            import binascii

            try:
                base64.b64decode(value[len("whsec_"):], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("a whsec_ secret must be base64 after the prefix") from None
        return value

    @field_validator("openai_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: str) -> str:
        # The openai SDK base64-decodes what follows whsec_ on every webhook: a bad one would make
        # every genuine webhook a 400 that blames the request, so it is refused here, at start.
        if value.startswith("whsec_"):
            try:
                base64.b64decode(value[len("whsec_"):])
            except (binascii.Error, ValueError):
                raise ValueError("the part after whsec_ is not base64 (copy the whole secret from "
                                 "OpenAI's dashboard)") from None
        return value

    @field_validator("realtime_url")
    @classmethod
    def _websocket_url(cls, value: str) -> str:
        if value != "local" and not value.startswith(("ws://", "wss://")):
            raise ValueError("must be a ws:// or wss:// URL (or 'local')")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   **_: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment is read by from_env() alone

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """The settings from ``env`` (default: the process environment); SettingsError names a bad one."""
        values = _Environment(cls, os.environ if env is None else env)()
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError("; ".join(cls._describe(error) for error in exc.errors())) from None

    @classmethod
    def _describe(cls, error: Any) -> str:
        """One validation error as the variable's name, what is wrong, and the value unless secret."""
        name = str(error["loc"][0]) if error["loc"] else "?"
        field = cls.model_fields.get(name) or cls.model_fields["realtime_api_key"]
        message = error["msg"].removeprefix("Value error, ")
        shown = "" if not field.repr else f", not {error['input']!r}"
        return f"{name.upper()}: {message}{shown}"

    def secrets(self) -> list[str]:
        """Values that must never be printed (used to scrub logs)."""
        from telephony.history.database import url_password

        values = [getattr(self, name) for name, f in type(self).model_fields.items()
                  if not f.repr and getattr(self, name)]
        # A driver's message may quote the URL's parts without the whole of it.
        return values + [password for password in [url_password(self.database_url)] if password]

    def openai_key(self) -> str:
        """The key for OpenAI's own endpoints (the SIP route's REST calls and sideband), "" if none:
        OPENAI_API_KEY; REALTIME_API_KEY only when the Realtime provider is OpenAI itself, so that
        another vendor's key (OPE.AI's, Azure's) is never sent to api.openai.com."""
        if self.openai_api_key:
            return self.openai_api_key
        return self.realtime_api_key if self.realtime_provider_is_openai() else ""

    def realtime_provider_is_openai(self) -> bool:
        """REALTIME_URL is on api.openai.com (or a regional host under it: eu.api.openai.com)."""
        host = urlsplit(self.realtime_url).hostname or ""
        return host == OPENAI_HOST or host.endswith("." + OPENAI_HOST)

    def require_openai_key(self) -> str:
        """``openai_key()``, or a SettingsError naming OPENAI_API_KEY (never a key's value)."""
        if key := self.openai_key():
            return key
        why = "it is not set"
        if self.realtime_api_key:
            provider = urlsplit(self.realtime_url).hostname or self.realtime_url
            why += f" (REALTIME_API_KEY is the key of the Realtime provider {provider}, never sent to OpenAI)"
        raise SettingsError(f"OPENAI_API_KEY: OpenAI's SIP route (OPENAI_WEBHOOK_SECRET is set) needs "
                            f"OpenAI's API key; {why}")

    def profile_path(self) -> Path:
        """AGENT_PROFILE (a profile file, or a directory of them), else config/agent.toml here, else
        the copy installed with the package."""
        if self.agent_profile:
            return Path(self.agent_profile)
        local = Path("config/agent.toml")
        if local.is_file():
            return local
        return Path(str(resources.files("telephony").joinpath("profiles", "agent.toml")))


class _Environment(EnvSettingsSource):
    """Environment variables from a mapping: the process's, or a test's."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=False, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Names in capitals only, as documented (`port=1` in the environment is not PORT).
        return {name.lower(): value for name, value in self._environ.items() if name.isupper() and value != ""}
