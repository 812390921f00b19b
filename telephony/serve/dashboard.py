"""The operator's dashboard: ``GET /dashboard``, server-rendered HTML with a little JavaScript.

One password field takes ``CALLS_API_TOKEN``; a right one gets a session cookie (HttpOnly,
SameSite=Strict, Secure over https) that the dashboard's pages and the calls API's read-only
endpoints accept in place of the bearer header. Without it a page shows the login form and
nothing of any call.

The session is stateless, so any instance verifies it: ``v1.<expiry>.<nonce>.<mac>``, the MAC an
HMAC-SHA256 keyed from the token, so a new token ends every session. Logging out clears the
cookie; a copied cookie stays valid until it expires (``DASHBOARD_SESSION_HOURS``).

Caller data (numbers, transcripts) is untrusted text: everything is escaped here, and the page's
scripts add it with ``textContent``. A content security policy allows only this response's own
scripts and styles (a nonce per response).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

log = logging.getLogger("telephony.dashboard")

COOKIE = "telephony_session"
PATH = "/dashboard"
LOGIN_FAILURES_PER_MINUTE = 10  # per client address; past it, 429 until the minute has passed
PAGE = 50  # history rows per page

# What the dashboard reads, given by the app (each may raise or answer None when it cannot).
LiveCalls = Callable[[], Awaitable[list[dict[str, Any]]]]
HistoryPage = Callable[[int, datetime | None], Awaitable[list[dict[str, Any]] | str]]
CallDetail = Callable[[str], Awaitable[dict[str, Any] | None | str]]
RecordingParts = Callable[[str], Awaitable[int]]


@dataclass
class Sources:
    live_calls: LiveCalls
    history_page: HistoryPage  # a list, or a string saying why there is none
    call_detail: CallDetail  # the call, None if unknown, or a string saying why it cannot be read
    recording_parts: RecordingParts  # how many recording parts the call has (0: none, or recordings off)


class Sessions:
    """Issues and checks the dashboard's session cookies."""

    def __init__(self, token: str, hours: float) -> None:
        self._key = hmac.new(token.encode(), b"telephony dashboard session v1", hashlib.sha256).digest()
        self.seconds = int(hours * 3600)

    def issue(self, now: float) -> str:
        body = f"{int(now) + self.seconds}.{secrets.token_urlsafe(12)}"
        return f"v1.{body}.{self._mac(body)}"

    def valid(self, cookie: str | None, now: float) -> bool:
        if not cookie or not cookie.startswith("v1.") or cookie.count(".") != 3:
            return False
        _, expiry, nonce, mac = cookie.split(".")
        body = f"{expiry}.{nonce}"
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return False
        return expiry.isdigit() and int(expiry) > now

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class LoginThrottle:
    """Wrong tokens per client address in the last minute: a guesser gets 429s, not answers."""

    def __init__(self, per_minute: int = LOGIN_FAILURES_PER_MINUTE) -> None:
        self.per_minute = per_minute
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, client: str, now: float) -> bool:
        recent = self._failures.get(client)
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if recent is not None and not recent:
            del self._failures[client]
            return False
        return recent is not None and len(recent) >= self.per_minute

    def failed(self, client: str, now: float) -> None:
        if len(self._failures) > 10_000:  # a flood of addresses: forget the oldest rather than grow
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(client, deque()).append(now)


class Dashboard:
    def __init__(self, token: str, hours: float, sources: Sources, public_https: bool = False) -> None:
        """``public_https``: PUBLIC_URL is https, so the cookie is Secure even where a proxy that
        ends TLS talks plain HTTP to us."""
        self.token = token
        self.public_https = public_https
        self.sessions = Sessions(token, hours) if token else None
        self.sources = sources
        self.throttle = LoginThrottle()

    def signed_in(self, request: Request) -> bool:
        return self.sessions is not None and self.sessions.valid(request.cookies.get(COOKIE), time.time())

    def routes(self) -> list[Route]:
        return [
            Route(PATH, self.home, methods=["GET"]),
            Route(PATH + "/login", self.login, methods=["POST"]),
            Route(PATH + "/logout", self.logout, methods=["POST"]),
            Route(PATH + "/calls/{call_sid}", self.call_page, methods=["GET"]),
        ]

    # --- Pages ---

    async def home(self, request: Request) -> Response:
        if not self.signed_in(request):
            return self._login_page(request)
        before = None
        if "before" in request.query_params:
            try:
                before = _utc(datetime.fromisoformat(request.query_params["before"]))
            except ValueError:
                return _page("Bad request", "<p class=error>before must be an ISO 8601 time</p>", status=400)
        live = await _guarded(self.sources.live_calls, "live calls")
        history = await _guarded(lambda: self.sources.history_page(PAGE, before), "history")
        return _page("Calls", _home_body(live, history, before), signed_in=True, script=LIVE_LIST_SCRIPT)

    async def call_page(self, request: Request) -> Response:
        if not self.signed_in(request):
            return self._login_page(request)
        sid = request.path_params["call_sid"]
        call = await _guarded(lambda: self.sources.call_detail(sid), "the call")
        if not isinstance(call, dict):  # not (yet) in the history: a live call still has a page
            live = await _guarded(self.sources.live_calls, "live calls")
            found = [c for c in live if c.get("call_sid") == sid] if isinstance(live, list) else []
            if found:
                call = _live_only(found[0])
        if call is None:
            return _page("Not found", f"<p class=error>No call {_e(sid)} in the history.</p>"
                         f"<p><a href='{PATH}'>All calls</a></p>", signed_in=True, status=404)
        parts = await _guarded(lambda: self.sources.recording_parts(sid), "recordings")
        parts = parts if isinstance(parts, int) else 0
        live = isinstance(call, dict) and call.get("state") == "live"
        return _page(f"Call {sid}", _call_body(sid, call, parts), signed_in=True,
                     script=FOLLOW_SCRIPT if live else "")

    def _login_page(self, request: Request, problem: str = "", status: int = 200) -> Response:
        if self.sessions is None:
            return _page("Dashboard off", "<p class=error>The dashboard needs CALLS_API_TOKEN to be set.</p>",
                         status=503)
        note = f"<p class=error role=alert>{_e(problem)}</p>" if problem else ""
        body = f"""<form class=login method=post action="{PATH}/login">
<h1>telephony</h1>
<label for=token>Calls API token</label>
<input id=token name=token type=password autocomplete=current-password required autofocus>
<button type=submit>Sign in</button>{note}
</form>"""
        return _page("Sign in", body, status=status)

    # --- Sign in and out ---

    async def login(self, request: Request) -> Response:
        if self.sessions is None:
            return _page("Dashboard off", "<p class=error>The dashboard needs CALLS_API_TOKEN to be set.</p>",
                         status=503)
        client = request.client.host if request.client else "?"
        now = time.monotonic()
        if self.throttle.blocked(client, now):
            return self._login_page(request, "Too many wrong tokens: wait a minute.", status=429)
        try:
            form = await request.form()
        except Exception:  # noqa: BLE001 - a body that is not a form
            return self._login_page(request, "Send the token as a form.", status=400)
        given = form.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
            self.throttle.failed(client, now)
            log.info("dashboard: wrong token from %s", client)
            return self._login_page(request, "Wrong token.", status=401)
        response = RedirectResponse(PATH, status_code=303)
        response.set_cookie(COOKIE, self.sessions.issue(time.time()), max_age=self.sessions.seconds, path="/",
                            httponly=True, samesite="strict", secure=self._secure(request))
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(PATH, status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=self._secure(request))
        return response

    def _secure(self, request: Request) -> bool:
        return self.public_https or request.url.scheme == "https"


async def _guarded(read: Callable[[], Awaitable[Any]], what: str) -> Any:
    """A source's answer, or a sentence saying it could not be had: a page shows what it can."""
    try:
        return await read()
    except Exception as exc:  # noqa: BLE001 - a database or store that is down costs one panel
        log.warning("dashboard: %s not read (%s)", what, type(exc).__name__)
        return f"{what} could not be read ({type(exc).__name__})"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(iso: str | None) -> str:
    if not iso:
        return ""
    return _e(iso.replace("T", " ").replace("Z", "")[:19])


def _ms(value: Any) -> str:
    return "" if value is None else f"{float(value):.0f} ms"


def _pill(text: str | None, kind: str) -> str:
    return f"<span class='pill {kind}'>{_e(text)}</span>" if text else ""


def _outcome_pill(call: dict[str, Any]) -> str:
    if call.get("state") == "live":
        return _pill("live", "live")
    return _pill(call.get("outcome") or "ended", "ok" if call.get("outcome") == "normal" else "bad")


# --- The calls page ---

def _home_body(live: Any, history: Any, before: datetime | None) -> str:
    parts = ["<section><h2>Live calls <span id=live-count class=count></span></h2>"]
    if isinstance(live, str):
        parts.append(f"<p class=error>{_e(live)}</p>")
    parts.append("<table id=live><thead><tr><th>Call</th><th>Direction</th><th>From</th><th>To</th>"
                 "<th>Started (UTC)</th><th>Instance</th></tr></thead><tbody>")
    for call in live if isinstance(live, list) else []:
        parts.append(_live_row(call))
    parts.append("</tbody></table>")
    parts.append(f"<p id=live-empty class=quiet{'' if not live else ' hidden'}>No call in progress.</p></section>")
    parts.append("<section><h2>Recent calls</h2>")
    if isinstance(history, str):
        parts.append(f"<p class=error>{_e(history)}</p></section>")
        return "".join(parts)
    parts.append("<table id=history><thead><tr><th>Started (UTC)</th><th>Call</th><th>Route</th><th>Direction</th>"
                 "<th>From</th><th>To</th><th class=num>Duration</th><th>Outcome</th><th>End</th></tr></thead><tbody>")
    for call in history:
        sid = call["call_sid"]
        duration = "" if call.get("duration_s") is None else f"{call['duration_s']:.1f} s"
        parts.append(
            f"<tr><td class=when>{_when(call.get('started_at'))}</td>"
            f"<td class=sid><a href='{PATH}/calls/{quote(sid, safe='')}'>{_e(sid)}</a></td>"
            f"<td>{_e(call.get('route'))}</td><td>{_e(call.get('direction'))}</td>"
            f"<td class=num>{_e(call.get('from'))}</td><td class=num>{_e(call.get('to'))}</td>"
            f"<td class=num>{duration}</td><td>{_outcome_pill(call)}</td>"
            f"<td class=reason>{_e(call.get('end_reason'))}</td></tr>")
    parts.append("</tbody></table>")
    if not history:
        parts.append("<p class=quiet>No ended call yet.</p>")
    nav = []
    if before is not None:
        nav.append(f"<a href='{PATH}'>Newest</a>")
    if len(history) == PAGE:
        nav.append(f"<a href='{PATH}?{urlencode({'before': history[-1]['started_at']})}'>Older →</a>")
    if nav:
        parts.append(f"<nav class=pager>{' · '.join(nav)}</nav>")
    parts.append("</section>")
    return "".join(parts)


def _live_row(call: dict[str, Any]) -> str:
    sid = str(call.get("call_sid") or "")
    started = call.get("started")
    when = (datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if isinstance(started, (int, float)) else _when(started))
    return (f"<tr><td class=sid><a href='{PATH}/calls/{quote(sid, safe='')}'>{_e(sid)}</a></td>"
            f"<td>{_e(call.get('direction'))}</td><td class=num>{_e(call.get('from'))}</td>"
            f"<td class=num>{_e(call.get('to'))}</td><td class=when>{when}</td>"
            f"<td>{_e(call.get('instance'))}</td></tr>")


# --- A call's page ---

def _live_only(listed: dict[str, Any]) -> dict[str, Any]:
    """A call in progress that the history has not written yet (its rows gather for half a
    second) or does not keep (CALL_HISTORY=false): what the live list knows."""
    started = listed.get("started")
    return {"call_sid": listed.get("call_sid"), "state": "live", "direction": listed.get("direction"),
            "from": listed.get("from"), "to": listed.get("to"),
            "started_at": (datetime.fromtimestamp(started, timezone.utc).isoformat()
                           if isinstance(started, (int, float)) else None),
            "turns": [], "events": [], "latency": {}}


def _call_body(sid: str, call: Any, parts: int) -> str:
    back = f"<p class=crumbs><a href='{PATH}'>← All calls</a></p>"
    if isinstance(call, str):
        return back + f"<h1 class=sid>{_e(sid)}</h1><p class=error>{_e(call)}</p>"
    facts = [("Route", call.get("route")), ("Direction", call.get("direction")), ("From", call.get("from")),
             ("To", call.get("to")), ("Profile", call.get("profile")), ("Dialect", call.get("dialect")),
             ("Started (UTC)", _when(call.get("started_at")) or None),
             ("Ended (UTC)", _when(call.get("ended_at")) or None),
             ("Duration", None if call.get("duration_s") is None else f"{call['duration_s']:.1f} s"),
             ("End", call.get("end_reason")), ("Handoffs", call.get("handoffs") or None),
             ("Answered by", call.get("answered_by")), ("Stream", call.get("stream_sid"))]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v not in (None, ""))
    latency = call.get("latency") or {}
    stats = [("Agent turns", latency.get("turns")), ("Median latency", _ms(latency.get("median_ms"))),
             ("Worst", _ms(latency.get("max_ms"))), ("Model (median)", _ms(latency.get("model_median_ms"))),
             ("Bridge (median)", _ms(latency.get("bridge_median_ms")))]
    stat_html = "".join(f"<div class=stat><b>{_e(v if v not in (None, '') else '–')}</b><span>{_e(k)}</span></div>"
                        for k, v in stats)
    audio = "".join(
        f"<figure><figcaption>Recording{f' part {n}' if parts > 1 else ''} (caller left, agent right)</figcaption>"
        f"<audio controls preload=metadata src='/calls/{quote(sid, safe='')}/recording?part={n}'></audio></figure>"
        for n in range(1, parts + 1)) or ("<p class=quiet>Following the call as it happens; its recording, if it is "
                                          "recorded, is here once it ends.</p>" if call.get("state") == "live"
                                          else "<p class=quiet>No recording.</p>")
    return (back + f"<h1><span class=sid>{_e(sid)}</span> {_outcome_pill(call)}</h1>"
            f"<div class=cols><dl class=facts>{dl}</dl><div><div class=stats>{stat_html}</div>{audio}</div></div>"
            f"<section><h2>Timeline</h2>{_timeline(call)}</section>")


def _timeline(call: dict[str, Any]) -> str:
    rows: list[tuple[float, int, str]] = []
    for n, turn in enumerate(call.get("turns") or []):
        at = turn.get("start_ms") if turn.get("start_ms") is not None else turn.get("end_ms")
        badges = ""
        if turn.get("interrupted"):
            badges += _pill(f"cut at {turn.get('heard_ms')} ms" if turn.get("heard_ms") is not None else "cut", "bad")
        if turn.get("resumed"):
            badges += _pill("resumed", "ok")
        latency = ""
        if turn.get("latency_ms") is not None:
            split = " / ".join(f"{label} {_ms(turn.get(key))}" for label, key in (("model", "model_ms"),
                                                                                   ("bridge", "bridge_ms"))
                               if turn.get(key) is not None)
            latency = f"<span class=latency title='{_e(split)}'>{_ms(turn['latency_ms'])}</span>"
        speaker = str(turn.get("speaker") or "")
        rows.append((at if at is not None else 1e12, n,
                     f"<tr class='turn {_e(speaker)}'><td class=at>{_clock(at)}</td><td class=who>{_e(speaker)}</td>"
                     f"<td class=text>{_e(turn.get('text'))} {badges}</td><td class=num>{latency}</td></tr>"))
    for n, event in enumerate(call.get("events") or []):
        if event.get("kind") in ("transcript",):
            continue
        rows.append((event.get("at_ms") if event.get("at_ms") is not None else 1e12, 10_000 + n,
                     f"<tr class=event><td class=at>{_clock(event.get('at_ms'))}</td>"
                     f"<td class=who>{_e(event.get('kind'))}</td><td class=text>{_event_text(event)}</td>"
                     f"<td class=num>{_ms(event.get('latency_ms'))}</td></tr>"))
    rows.sort(key=lambda r: (r[0], r[1]))
    body = "".join(r[2] for r in rows)
    empty = "" if rows else "<p id=timeline-empty class=quiet>Nothing said yet.</p>"
    return (f"<table id=timeline><thead><tr><th>At</th><th>Who / what</th><th>Said / happened</th>"
            f"<th class=num>Latency</th></tr></thead><tbody>{body}</tbody></table>{empty}")


def _event_text(event: dict[str, Any]) -> str:
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    kind = event.get("kind")
    if kind == "tool_call":
        return f"{_e(event.get('name'))} {_pill(event.get('outcome'), 'ok' if event.get('outcome') == 'ok' else 'bad')}"
    if kind == "interruption":
        transcript = data.get("transcript")
        said = f" “{_e(transcript)}”" if transcript else ""
        return f"{_pill(event.get('decision'), 'ok' if event.get('decision') == 'resumed' else 'bad')}{said}"
    if kind == "barge_in":
        heard = data.get("heard_ms")
        return "caller spoke over the agent" + (f" after {_e(heard)} ms of its answer" if heard is not None else "")
    if kind == "recording":
        return f"recorded {_e(data.get('seconds'))} s"
    shown = {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool)) and k not in ("at",)}
    return _e(", ".join(f"{k}: {v}" for k, v in list(shown.items())[:6]))


def _clock(ms: Any) -> str:
    if ms is None:
        return ""
    seconds = float(ms) / 1000
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


# --- The document ---

def _page(title: str, body: str, *, signed_in: bool = False, status: int = 200, script: str = "") -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    bar = (f"<header><a class=brand href='{PATH}'>telephony</a><span class=grow></span>"
           f"<form method=post action='{PATH}/logout'><button class=link type=submit>Sign out</button></form></header>"
           if signed_in else "")
    scripts = f"<script nonce='{nonce}'>{script}</script>" if script else ""
    document = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
                f"<meta name=viewport content='width=device-width, initial-scale=1'>"
                f"<title>{_e(title)} · telephony</title><style nonce='{nonce}'>{STYLE}</style></head>"
                f"<body>{bar}<main>{body}</main>{scripts}</body></html>")
    headers = {
        "Content-Security-Policy": (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                                    "connect-src 'self'; media-src 'self'; img-src 'self'; form-action 'self'; "
                                    "frame-ancestors 'none'; base-uri 'none'"),
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
    }
    return HTMLResponse(document, status_code=status, headers=headers)


STYLE = """
:root{--bg:#f6f7f9;--fg:#1d2330;--mute:#6b7385;--line:#e2e5ea;--card:#fff;--accent:#2457d6;
--ok:#17803d;--okbg:#e3f5e9;--bad:#b42318;--badbg:#fde8e6;--live:#9a5b00;--livebg:#fff1d6}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{display:flex;align-items:center;gap:12px;background:#151b26;color:#fff;padding:10px 24px}
header .brand{color:#fff;font-weight:600;text-decoration:none;letter-spacing:.02em}
.grow{flex:1}
button.link{background:none;border:1px solid #3a4354;color:#d6dbe5;border-radius:6px;padding:4px 10px;cursor:pointer}
main{max-width:1200px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:20px;margin:8px 0 16px;display:flex;align-items:center;gap:10px}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:var(--mute);margin:28px 0 8px}
section{margin-bottom:8px}
table{width:100%;border-collapse:collapse;background:var(--card);border:1px solid var(--line);border-radius:8px;
overflow:hidden}
th,td{padding:6px 10px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;font-weight:600;color:var(--mute);background:#fafbfc}
tbody tr:hover{background:#f3f6fd}
tbody tr:last-child td{border-bottom:0}
.sid,.num,.at{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
th.num{font-family:inherit;font-size:12px}.when{white-space:nowrap}
h1 .sid{font-size:17px}
.num{text-align:right;white-space:nowrap}
td.num{text-align:left}
th.num,td.num.r{text-align:right}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.pill{display:inline-block;font-size:11.5px;font-weight:600;padding:1px 8px;border-radius:999px;margin-left:4px}
.pill.ok{color:var(--ok);background:var(--okbg)}.pill.bad{color:var(--bad);background:var(--badbg)}
.pill.live{color:var(--live);background:var(--livebg)}
.reason{color:var(--mute);max-width:280px}
.quiet{color:var(--mute)}.hidden{display:none}
.error{color:var(--bad)}
.count{font-weight:600;color:var(--fg);margin-left:6px}
.pager{margin-top:10px}
.crumbs{margin:0 0 4px}
.cols{display:grid;grid-template-columns:minmax(280px,1fr) 2fr;gap:20px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0;background:var(--card);
border:1px solid var(--line);border-radius:8px;padding:12px 14px}
dt{color:var(--mute)}dd{margin:0;word-break:break-all}
.stats{display:grid;grid-template-columns:repeat(5,1fr);gap:8px;margin-bottom:12px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 10px}
.stat b{display:block;font-size:18px}.stat span{color:var(--mute);font-size:12px}
figure{margin:0 0 8px}figcaption{color:var(--mute);font-size:12px;margin-bottom:4px}audio{width:100%}
#timeline td.who{width:110px;color:var(--mute);font-size:12.5px}
#timeline td.at{width:70px;color:var(--mute)}
#timeline tr.turn.agent td.who{color:var(--accent);font-weight:600}
#timeline tr.turn.caller td.who{color:#7a3fb0;font-weight:600}
#timeline tr.event td.text{color:var(--mute)}
.latency{font-family:ui-monospace,Menlo,monospace}
form.login{max-width:340px;margin:12vh auto;background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:24px;display:flex;flex-direction:column;gap:10px}
form.login h1{margin:0 0 6px}
input[type=password]{padding:8px 10px;border:1px solid var(--line);border-radius:6px;font:inherit}
form.login button{padding:8px;border:0;border-radius:6px;background:var(--accent);color:#fff;font:inherit;
cursor:pointer}
@media (max-width:800px){.cols{grid-template-columns:1fr}.stats{grid-template-columns:repeat(2,1fr)}}
"""

# Live calls, refreshed every 2 s from GET /calls (the session cookie authorises it). Text goes in
# with textContent only: a caller's number or a stranger's sid is never markup.
LIVE_LIST_SCRIPT = """
(function(){
  var body=document.querySelector('#live tbody'),empty=document.getElementById('live-empty'),
      count=document.getElementById('live-count');
  function cell(row,text,cls){var td=document.createElement('td');if(cls)td.className=cls;
    td.textContent=text==null?'':String(text);row.appendChild(td);return td;}
  function when(t){return typeof t==='number'?new Date(t*1000).toISOString().replace('T',' ').slice(0,19):
    String(t||'').replace('T',' ').replace('Z','').slice(0,19);}
  function draw(calls){
    body.textContent='';
    calls.forEach(function(c){
      var row=document.createElement('tr'),td=cell(row,'','sid'),a=document.createElement('a');
      a.href='/dashboard/calls/'+encodeURIComponent(c.call_sid);a.textContent=c.call_sid;td.appendChild(a);
      cell(row,c.direction);cell(row,c.from,'num');cell(row,c.to,'num');cell(row,when(c.started),'when');
      cell(row,c.instance);body.appendChild(row);});
    empty.classList.toggle('hidden',calls.length>0);count.textContent=calls.length?String(calls.length):'';
  }
  function poll(){
    fetch('/calls',{credentials:'same-origin',headers:{'Accept':'application/json'}})
      .then(function(r){if(r.status===401){location.reload();return null;}return r.ok?r.json():null;})
      .then(function(j){if(j&&j.calls)draw(j.calls);}).catch(function(){})
      .finally(function(){setTimeout(poll,2000);});
  }
  setTimeout(poll,2000);
})();
"""

# A live call's transcript as it happens: the call's SSE feed, each turn appended with textContent.
FOLLOW_SCRIPT = """
(function(){
  var sid=decodeURIComponent(location.pathname.split('/').pop()),body=document.querySelector('#timeline tbody'),
      empty=document.getElementById('timeline-empty'),
      source=new EventSource('/calls/'+encodeURIComponent(sid)+'/transcript');
  function cell(row,text,cls){var td=document.createElement('td');if(cls)td.className=cls;
    td.textContent=text==null?'':String(text);row.appendChild(td);return td;}
  source.addEventListener('transcript',function(e){
    var t=JSON.parse(e.data),row=document.createElement('tr');row.className='turn '+(t.speaker||'');
    var at=typeof t.at==='number'?Math.floor(t.at/60)+':'+(t.at%60).toFixed(1).padStart(4,'0'):'';
    cell(row,at,'at');cell(row,t.speaker,'who');cell(row,t.text,'text');cell(row,'','num');
    body.appendChild(row);if(empty)empty.remove();});
  source.addEventListener('end',function(){source.close();setTimeout(function(){location.reload();},1500);});
})();
"""
