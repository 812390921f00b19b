"""The dashboard in a real browser: Debian's Chromium driven by Playwright (nothing downloaded),
against the real app on loopback with a call placed by the simulator, the history in SQLite and
the recording in a directory. Screenshots of each page go to $DASHBOARD_SHOTS (default /tmp).

Skipped without /usr/bin/chromium, unless REQUIRE_CHROMIUM=1 (CI sets it: there it must run)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from conftest import running_app
from helpers import simulated_call, ulaw_silence, ulaw_tone

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.serve.dashboard import COOKIE, Sessions
from telephony.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "dashboard-test-token-7781"
# A caller's words that are markup: the page must show them, never run them.
XSS = "<img src=x onerror=\"document.title='pwned'\"> I want the blue one"
SHOTS = Path(os.environ.get("DASHBOARD_SHOTS", "/tmp"))
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
async def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed (REQUIRE_CHROMIUM=1): apt-get install chromium")
        pytest.skip("chromium is not installed")
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


def settings(server, tmp_path: Path, **kw) -> Settings:
    return Settings(**{"twilio_validate_signatures": False, "realtime_url": server.url, "realtime_api_key": "sk-test",
                       "audio_codec": "g711_ulaw", "calls_api_token": TOKEN,
                       "recordings_url": f"file://{tmp_path / 'rec'}",
                       "database_url": f"sqlite:///{tmp_path / 'calls.sqlite3'}", **kw})


async def until(check, timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_the_dashboard_signs_in_follows_a_live_call_and_shows_its_history(browser, tmp_path):
    # The greeting, the caller talking over it (the words above), the agent's answer; then quiet.
    script = Script(response_ms=4000, speed=1.0, caller_transcripts=(XSS,))
    caller = ulaw_silence(2.5) + ulaw_tone(500, 1.0) + ulaw_silence(6.0)
    async with ScriptedRealtimeServer(script) as server, \
            running_app(settings(server, tmp_path)) as (app, host):
        base = f"http://{host}"
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()

        # Signed out: the login form and nothing of any call; the API wants the token too.
        await page.goto(f"{base}/dashboard")
        assert await page.locator("input[type=password]").count() == 1
        assert await page.locator("#live, #history").count() == 0
        await page.screenshot(path=str(SHOTS / "dashboard-login.png"))
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{base}/calls")).status_code == 401

        # A wrong token is refused.
        await page.fill("input[type=password]", "not-the-token")
        await page.click("button[type=submit]")
        assert "Wrong token" in await page.content()
        assert await page.locator("#live").count() == 0

        # The call starts; sign in; it appears among the live calls (the page polls).
        sim = simulated_call(app, host, caller_audio=caller, parameters={"from": "+15550100001",
                                                                          "to": "+15550100002"})
        call = asyncio.create_task(sim.run())
        await page.fill("input[type=password]", TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#live")
        await page.wait_for_selector(f"#live td.sid >> text={sim.call_sid}", timeout=8000)
        await page.screenshot(path=str(SHOTS / "dashboard-live.png"))
        (cookie,) = [c for c in await context.cookies() if c["name"] == COOKIE]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
        assert TOKEN not in cookie["value"]

        # The live call's page follows its transcript as it happens (the SSE feed).
        await page.click(f"#live a >> text={sim.call_sid}")
        await page.wait_for_selector("#timeline tr.turn.agent", timeout=8000)
        await page.wait_for_selector("#timeline tr.turn.caller", timeout=8000)
        await page.screenshot(path=str(SHOTS / "dashboard-live-call.png"))
        result = await call
        assert result.close_code in (None, 1000)

        # Ended: in the history, linked to its page, which shows its turns, events and recording.
        await page.goto(f"{base}/dashboard")

        async def listed():
            await page.reload()
            return await page.locator(f"#history a >> text={sim.call_sid}").count() == 1
        await until(listed, 10, "the call in the history")
        assert await page.locator("#live tbody tr").count() == 0
        await page.screenshot(path=str(SHOTS / "dashboard-history.png"))
        await page.click(f"#history a >> text={sim.call_sid}")

        async def recorded():
            await page.reload()
            return await page.locator("audio").count() == 1
        await until(recorded, 10, "the recording on the call's page")
        timeline = page.locator("#timeline")
        assert await timeline.locator("tr.turn.agent").count() >= 2  # the greeting (cut) and the answer
        caller_text = await timeline.locator("tr.turn.caller td.text").first.text_content()
        assert XSS in caller_text  # shown as text…
        assert await timeline.locator("img").count() == 0  # …never as markup
        assert await page.title() != "pwned"
        assert await timeline.locator(".pill", has_text="cut at").count() == 1
        assert await timeline.locator("tr.event", has_text="barge_in").count() >= 1
        await page.screenshot(path=str(SHOTS / "dashboard-call.png"), full_page=True)
        # The player's source is served to the browser's session: audio, and seekable.
        src = await page.locator("audio").get_attribute("src")
        fetched = await page.evaluate("""async (src) => {
            const whole = await fetch(src), part = await fetch(src, {headers: {Range: 'bytes=0-99'}});
            const bytes = (await part.arrayBuffer()).byteLength;
            return [whole.status, whole.headers.get('content-type'), part.status, bytes];
        }""", src)
        assert fetched[0] == 200 and fetched[1].startswith("audio/") and fetched[2:] == [206, 100], fetched

        # Signed out: the session is gone, and with it every call.
        await page.click("text=Sign out")
        await page.wait_for_selector("input[type=password]")
        await page.goto(f"{base}/dashboard/calls/{sim.call_sid}")
        assert await page.locator("#timeline").count() == 0 and sim.call_sid not in await page.content()
        await context.close()


async def test_the_session_cookie_opens_reads_only_and_is_checked(tmp_path):
    """Without a browser: what the cookie opens, and what it does not."""
    async with ScriptedRealtimeServer(Script()) as server, running_app(settings(server, tmp_path)) as (app, host):
        base = f"http://{host}"
        async with httpx.AsyncClient(base_url=base) as client:
            signed = await client.post("/dashboard/login", data={"token": TOKEN})
            assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
            set_cookie = signed.headers["set-cookie"]
            assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie and "Secure" not in set_cookie
            session = client.cookies[COOKIE]
            page = await client.get("/dashboard")
            assert page.status_code == 200 and "Recent calls" in page.text
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert page.headers["cache-control"] == "no-store"
            assert (await client.get("/calls")).status_code == 200  # a read: the cookie will do
            # A write is not: the cookie goes with any page's request, the bearer token does not.
            placed = await client.post("/calls", json={"to": "+15550100002"})
            assert placed.status_code == 401
        async with httpx.AsyncClient(base_url=base) as stranger:
            forged = session.rsplit(".", 1)[0] + ".AAAA"
            for cookie in (forged, "v1.9999999999.x.y", "", "garbage"):
                stranger.cookies.set(COOKIE, cookie)
                assert (await stranger.get("/calls")).status_code == 401
                assert "input" in (await stranger.get("/dashboard")).text  # the login form
        expired = Sessions(TOKEN, 1).issue(time.time() - 2 * 3600)
        async with httpx.AsyncClient(base_url=base, cookies={COOKIE: expired}) as late:
            assert (await late.get("/calls")).status_code == 401
        # Guessing: ten wrong tokens a minute, then 429 even for the right one.
        async with httpx.AsyncClient(base_url=base) as guesser:
            codes = [(await guesser.post("/dashboard/login", data={"token": f"guess-{n}"})).status_code
                     for n in range(10)]
            assert codes == [401] * 10
            assert (await guesser.post("/dashboard/login", data={"token": TOKEN})).status_code == 429


async def test_without_a_token_the_dashboard_is_off(tmp_path):
    async with ScriptedRealtimeServer(Script()) as server, \
            running_app(settings(server, tmp_path, calls_api_token="")) as (app, host):
        async with httpx.AsyncClient(base_url=f"http://{host}") as client:
            page = await client.get("/dashboard")
            assert page.status_code == 503 and "CALLS_API_TOKEN" in page.text
            assert (await client.post("/dashboard/login", data={"token": ""})).status_code == 503


async def test_the_cookie_is_secure_when_the_public_url_is_https(tmp_path):
    """Behind a proxy that ends TLS the request reaches us over HTTP: PUBLIC_URL says it is https."""
    async with ScriptedRealtimeServer(Script()) as server, \
            running_app(settings(server, tmp_path, public_url="https://bridge.example.com")) as (app, host):
        async with httpx.AsyncClient(base_url=f"http://{host}") as client:
            signed = await client.post("/dashboard/login", data={"token": TOKEN})
    assert signed.status_code == 303 and "Secure" in signed.headers["set-cookie"]
