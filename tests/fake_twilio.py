"""A fake Twilio REST API on loopback (real HTTP): records calls.create and calls(sid).update.

The app itself lives in telephony/offline/fake_twilio_rest.py (the fault suite uses it too)."""

from __future__ import annotations

import contextlib

from conftest import serve_app

from telephony.offline.fake_twilio_rest import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

__all__ = ["ACCOUNT_SID", "AUTH_TOKEN", "FakeTwilio", "running_fake_twilio"]


@contextlib.asynccontextmanager
async def running_fake_twilio():
    fake = FakeTwilio()
    async with serve_app(fake.app()) as host:
        fake.base_url = f"http://{host}"
        yield fake
