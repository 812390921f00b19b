"""What every carrier's caller side shares: the webhook it posts, the answer it reads, and the
description (``Carrier``) that ``telephony simulate``, ``telephony demo`` and the load benchmark
look a carrier up by. A new carrier is one more module with one more ``Carrier``."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from telephony.offline.simulator import CallSimulator

HTTP_TIMEOUT_S = 5.0


class DialError(RuntimeError):
    """The webhook refused the call, or did not answer with a stream this caller can open."""


@dataclass(frozen=True)
class StreamInstructions:
    url: str  # the media websocket to open
    parameters: dict[str, str]  # the custom parameters the carrier hands back in its start message


# (method, signed URL, form fields, raw body) → the headers that sign the request.
Signer = Callable[[str, str, Mapping[str, str], bytes], dict[str, str]]


@dataclass(frozen=True)
class Carrier:
    name: str
    voice_path: str  # where the carrier posts an incoming call's webhook
    media_path: str  # the service's media route for it (for help texts)
    simulator: type[CallSimulator]
    credential: str  # the service's variable the signature is checked with (for messages)
    # The webhook's form fields for an incoming call (the carrier's names and number format).
    webhook_fields: Callable[[str, str, str], dict[str, str]]
    # How the carrier signs, from the environment the simulator runs in (and its CLI options);
    # None: no credential there, the webhook goes unsigned (a service with validation off takes it).
    signer_from_env: Callable[[Mapping[str, str], Mapping[str, Any]], Signer | None]
    # Fresh credentials for a self-contained run: (the service's settings, the simulator's
    # environment that ``signer_from_env`` reads the matching credential from).
    generated: Callable[[], tuple[dict[str, Any], dict[str, str]]]
    parse_answer: Callable[[str], StreamInstructions]  # the markup the webhook answers with
    webhook_json: bool = False  # the webhook's body is JSON (Vonage), not a form


def http_base(url: str) -> str:
    """ws://host:port/anything (or http://…) → http://host:port (wss → https)."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None:
        raise DialError(f"not a ws:// or wss:// URL: {url!r}")
    return f"{scheme}://{parts.netloc}"


def post_webhook(carrier: Carrier, base: str, fields: dict[str, str], signer: Signer | None,
                 public_url: str | None = None) -> StreamInstructions:
    """POSTs an incoming call's webhook as the carrier does (form-encoded or JSON, signed over the URL the
    service is published at: ``public_url`` when given, else the one called). Blocking: run it off
    the event loop. A refusal raises ``DialError`` with the service's status and reason."""
    url = base.rstrip("/") + carrier.voice_path
    signed = (public_url.rstrip("/") + carrier.voice_path) if public_url else url
    if carrier.webhook_json:
        body, headers = json.dumps(fields).encode(), {"Content-Type": "application/json"}
    else:
        body, headers = urllib.parse.urlencode(fields).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    if signer is not None:
        headers.update(signer("POST", signed, fields, body))
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return carrier.parse_answer(response.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        reason = exc.read().decode("utf-8", "replace").strip()[:300]
        raise DialError(f"the {carrier.name} webhook {url} refused the call: HTTP {exc.code}: {reason}") from None
    except OSError as exc:
        raise DialError(f"cannot reach the {carrier.name} webhook {url}: {exc}") from None


def service_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """Settings as the environment variables the service reads them from (``telephony serve``)."""
    return {name.upper(): (str(value).lower() if isinstance(value, bool) else str(value))
            for name, value in settings.items()}
