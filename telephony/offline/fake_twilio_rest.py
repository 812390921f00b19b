"""A fake Twilio REST API (real HTTP, a Starlette app): records calls.create and calls(sid).update.

Shared by the tests (tests/fake_twilio.py serves it on loopback) and the fault suite
(``offline/chaos.py``), which plays Twilio's part on an update: ``on_update`` sees every call
update, e.g. the handoff's new ``<Connect><Stream>``, and can open the new stream."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "twilio-auth-token-secret"


@dataclass
class FakeTwilio:
    created: list[dict[str, str]] = field(default_factory=list)
    updates: list[tuple[str, dict[str, str], float]] = field(default_factory=list)  # sid, form, time
    fail_with: tuple[int, int, str] | None = None  # (status, twilio code, message)
    update_delay_s: float = 0.0  # a slow Twilio: how long a call update takes to answer
    base_url: str = ""
    on_update: Callable[[str, dict[str, str]], None] | None = None

    def app(self) -> Starlette:
        def twilio_error(status: int, code: int, message: str) -> JSONResponse:
            return JSONResponse({"code": code, "message": message, "status": status,
                                 "more_info": f"https://www.twilio.com/docs/errors/{code}"}, status)

        def authorised(request: Request) -> bool:
            expected = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
            return request.headers.get("authorization") == f"Basic {expected}"

        def call_json(sid: str, form: dict[str, str], status: str) -> dict:
            return {"sid": sid, "account_sid": ACCOUNT_SID, "to": form.get("To"),
                    "from": form.get("From"), "status": status, "direction": "outbound-api",
                    "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid}.json"}

        async def create(request: Request):
            if not authorised(request):
                return twilio_error(401, 20003, "Authenticate")
            if self.fail_with:
                return twilio_error(*self.fail_with)
            form = {k: v for k, v in (await request.form()).multi_items()}
            self.created.append(form)
            return JSONResponse(call_json("CA" + uuid.uuid4().hex, form, "queued"), 201)

        async def update(request: Request):
            if not authorised(request):
                return twilio_error(401, 20003, "Authenticate")
            form = {k: v for k, v in (await request.form()).multi_items()}
            sid = request.path_params["sid"]
            self.updates.append((sid, form, time.monotonic()))
            await asyncio.sleep(self.update_delay_s)
            if self.fail_with:
                return twilio_error(*self.fail_with)
            if self.on_update is not None:
                self.on_update(sid, form)
            return JSONResponse(call_json(sid, form, form.get("Status", "in-progress")))

        return Starlette(routes=[
            Route("/2010-04-01/Accounts/{account}/Calls.json", create, methods=["POST"]),
            Route("/2010-04-01/Accounts/{account}/Calls/{sid}.json", update, methods=["POST"]),
        ])
