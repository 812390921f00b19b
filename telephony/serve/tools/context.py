"""What a tool runner is given: the call it runs for, and the call's shared HTTP client."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import httpx


class ToolFailure(Exception):
    """A tool that ran and failed; the message is what the model is told (no secrets, no URLs)."""


@dataclass(frozen=True)
class CallContext:
    """The call a tool runs for; Python tools get it as their first argument."""

    call_sid: str
    from_: str
    to: str
    direction: str
    metadata: dict[str, Any] = field(default_factory=dict)
    profile: str = ""

    @classmethod
    def of(cls, call_sid: str, parameters: Mapping[str, str], profile: str) -> "CallContext":
        try:
            metadata = json.loads(parameters.get("metadata") or "{}")
        except ValueError:
            metadata = {}
        return cls(call_sid, parameters.get("from", ""), parameters.get("to", ""),
                   parameters.get("direction", ""), metadata if isinstance(metadata, dict) else {}, profile)

    def as_json(self) -> dict[str, Any]:
        return {"call_sid": self.call_sid, "from": self.from_, "to": self.to, "direction": self.direction,
                "metadata": self.metadata}


class ToolSession:
    """One call's tool resources: an HTTP client (pooled connections), closed when the call ends."""

    def __init__(self, context: CallContext, secret: str) -> None:
        self.context = context
        self.secret = secret
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=False)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
