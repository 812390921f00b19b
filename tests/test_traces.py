"""Traces over real sockets: the real app, a simulated caller, a scripted model, and a real OTLP/HTTP
receiver on loopback that decodes what the SDK exports (tests/otlp_receiver.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import ROOT, running_app
from helpers import active_spans, free_port, simulated_call, ulaw_silence, ulaw_tone, wait_until
from otlp_receiver import OtlpReceiver

from telephony.core.profile import load_profile
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.ops.records import read_records, record_path
from telephony.ops.tracing import traces_endpoint
from telephony.settings import Settings

CALLER = {"from": "+15550100001", "to": "+15550100002", "direction": "inbound"}
INTERRUPTION = "Wait, that is not what I asked for."
PROFILE = """
[agent]
instructions = "You help callers with their orders."
greeting = "Hello, order desk."

[tools]
enabled = ["end_call"]

[[tools.python]]
name = "check_stock"
description = "How many of an item are in stock"
function = "tool_functions:check_stock"
parameters = { type = "object", properties = { item = { type = "string" } }, required = ["item"] }
"""


@pytest.fixture(autouse=True)
def exporters_finish(monkeypatch):
    """An exporter left retrying a refusing or hung collector after its test logs an ERROR later,
    in whatever test runs next in this process: each test waits for its exporters' threads."""
    import threading

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # seconds: a hung export gives up soon
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        if thread.name.startswith(("OtelBatch", "telephony-traces")):
            thread.join(15)


def settings(server: ScriptedRealtimeServer, collector: str, dialect: str = "beta", **kw) -> Settings:
    return Settings(twilio_validate_signatures=False, realtime_url=server.url, realtime_api_key="sk-test",
                    realtime_dialect=dialect, audio_codec="g711_ulaw", otel_exporter_otlp_endpoint=collector, **kw)


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_a_call_is_one_trace_its_turns_with_latency_a_tool_and_the_barge_in(tmp_path, dialect):
    """The caller talks over the greeting (a real interruption), the answer calls a tool, and the
    tool's result is spoken: one trace, its turns, the tool inside the turn that called it."""
    profile = tmp_path / "orders.toml"
    profile.write_text(PROFILE)
    script = Script(response_ms=3000, speed=1.2, caller_transcripts=(INTERRUPTION,),
                    response_lengths={1: 800, 2: 800}, tool_calls={1: ("check_stock", '{"item": "socks"}')})
    caller = ulaw_silence(1.0) + ulaw_tone(500, 1.5) + ulaw_silence(4.5)
    with OtlpReceiver() as collector:
        async with ScriptedRealtimeServer(script, dialect=dialect) as server, \
                running_app(settings(server, collector.url, dialect, call_records_dir=tmp_path),
                            load_profile(profile)) as (app, host):
            sim = simulated_call(app, host, parameters=CALLER, caller_audio=caller)
            await sim.run()
            await wait_until(lambda: not app.state.active_calls, "the call's end on the app's side")
            assert await app.state.tracing.flush(5.0)
            await app.state.tracing.shutdown(5.0)
    records = read_records(record_path(tmp_path, sim.call_sid))

    (call,) = collector.named("call")
    assert call.parent_id == "" and call.status != 2
    assert call.resource["service.name"] == "telephony"
    assert {k: call.attributes[k] for k in ("call.sid", "call.route", "call.dialect", "call.profile",
                                            "call.outcome", "call.codec", "call.direction")} == {
        "call.sid": sim.call_sid, "call.route": "twilio", "call.dialect": dialect, "call.profile": "orders",
        "call.outcome": "normal", "call.codec": "g711_ulaw", "call.direction": "inbound"}
    assert call.attributes["call.barge_ins"] == 1
    assert {span.trace_id for span in collector.spans} == {call.trace_id}  # one trace per call

    turns = sorted(collector.named("turn"), key=lambda s: s.attributes["turn.number"])
    assert all(t.parent_id == call.span_id for t in turns)
    assert call.start_ns <= turns[0].start_ns and turns[-1].end_ns <= call.end_ns
    assert all(a.end_ns == b.start_ns for a, b in zip(turns, turns[1:]))  # one after the other
    greeting, answer = turns[0], turns[1]
    assert greeting.attributes["turn.greeting"] is True
    # The barge-in happened over the greeting: its events are there, without the caller's words.
    (barge_in,) = [e for e in greeting.events if e[0] == "barge_in"]
    (interruption,) = [e for e in greeting.events if e[0] == "interruption"]
    assert interruption[2]["interruption.decision"] == "stopped"
    assert interruption[2]["interruption.speech_ms"] > 300 and "interruption.paused_ms" in interruption[2]
    assert greeting.start_ns < barge_in[1] <= interruption[1] < greeting.end_ns

    # Each answered turn: its latency from the caller's end of speech to the first agent audio
    # sent, the same figure as the call record's, and an event at that moment.
    latencies = [r["ms"] for r in records if r["kind"] == "response_latency"]
    assert "turn.answered" not in greeting.attributes  # the agent spoke first: no caller turn to answer
    answered = [t for t in turns[1:] if t.attributes["turn.answered"]]
    assert [t.attributes["turn.latency_ms"] for t in answered] == latencies and latencies
    for turn in answered:
        (sent,) = [e for e in turn.events if e[0] == "agent_audio_sent"]
        assert (sent[1] - turn.start_ns) / 1e6 == pytest.approx(turn.attributes["turn.latency_ms"], abs=0.1)

    (tool,) = collector.named("tool_call")
    assert tool.parent_id == answer.span_id  # the turn whose answer called it
    assert (tool.attributes["tool.name"], tool.attributes["tool.outcome"]) == ("check_stock", "ok")
    assert tool.attributes["tool.latency_ms"] >= 50  # the tool sleeps 50 ms
    assert tool.duration_ms == pytest.approx(tool.attributes["tool.latency_ms"], abs=0.5)
    assert answer.start_ns <= tool.start_ns and tool.end_ns <= answer.end_ns

    # No caller data and no secrets in anything exported.
    exported = json.dumps([(s.attributes, s.events, s.resource) for s in collector.spans])
    for secret in (INTERRUPTION, "+15550100001", "+15550100002", "socks", "sk-test"):
        assert secret not in exported


@pytest.mark.parametrize("collector", ["hung", "refusing"])
async def test_a_hung_or_refusing_collector_costs_the_call_nothing(monkeypatch, collector):
    """Exports are attempted all through the call (every 50 ms), to a collector that never answers
    or a port nobody listens on: the caller hears the greeting whole and on time, and the spans
    are given up within the shutdown budget."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    script = Script(response_ms=2000, speed=1.0)
    with OtlpReceiver(hang=True) as hung:
        url = hung.url if collector == "hung" else f"http://127.0.0.1:{free_port()}"
        async with ScriptedRealtimeServer(script) as server, \
                running_app(settings(server, url)) as (app, host):
            tracing = app.state.tracing
            first = simulated_call(app, host, parameters=CALLER, caller_audio=ulaw_silence(3.0))
            result = await first.run()
            second = await simulated_call(app, host, parameters=CALLER, caller_audio=ulaw_silence(3.0)).run()
            await wait_until(lambda: not app.state.active_calls, "the calls' end on the app's side")
            metrics = app.state.metrics.render().decode()
            started = time.monotonic()
            assert not await tracing.shutdown(1.0) or collector == "refusing"
            assert time.monotonic() - started < 1.5
        if collector == "hung":
            assert hung.requests  # the first call's spans went out while the second was under way
    for call in (result, second):
        (spoken,) = active_spans(call.agent)
        assert spoken[1] - spoken[0] == pytest.approx(2.0, abs=0.03)  # whole, without a gap
    assert 'telephony_calls_total{outcome="normal"} 2.0' in metrics


async def test_shutdown_with_a_hung_collector_ends_within_the_flush_budget():
    """The app's lifespan sends the last spans at shutdown, bounded like the rest of its flush."""
    from telephony.serve.app import create_app

    with OtlpReceiver(hang=True) as hung:
        app = create_app(Settings(twilio_validate_signatures=False, otel_exporter_otlp_endpoint=hung.url,
                                  shutdown_flush_seconds=1.0), load_profile(ROOT / "config" / "agent.toml"))
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        app.state.tracing.call("twilio").close("no_start")  # a span waiting to be exported
        started = time.monotonic()
        await lifespan.__aexit__(None, None, None)
        elapsed = time.monotonic() - started
        assert hung.requests  # it was sent, and never answered
    assert 0.9 <= elapsed < 1.5


def test_without_an_endpoint_opentelemetry_is_not_even_imported(tmp_path):
    """Off and free: the app is built and a call observed without one OpenTelemetry module loaded."""
    code = """
import sys
from telephony.core.call import Call
from telephony.core.profile import load_profile
from telephony.ops.metrics import Metrics
from telephony.serve.app import create_app
from telephony.serve.telemetry import CallObserver
from telephony.settings import Settings
app = create_app(Settings(twilio_validate_signatures=False))
assert app.state.tracing is None
observer = CallObserver(Metrics(), None, {})
observer.sent("twilio", "media", 0.0, 0.001)
observer.close()
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "http://collector:4318/v1/traces"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.example.com/otlp/"}, "https://otlp.example.com/otlp/v1/traces"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4318/spans"},
     "http://b:4318/spans"),
])
def test_the_endpoint_follows_the_otlp_rules(env, expected):
    assert traces_endpoint(Settings.from_env(env)) == expected


def test_the_endpoint_must_be_a_url():
    from telephony.settings import SettingsError

    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"})



async def test_a_model_reconnect_is_a_span_under_the_call():
    """The model's socket drops mid-call (~1.5 s in) and the bridge reconnects: a span from the
    drop to the restored session, under the call."""
    script = Script(response_ms=600, drop_after=80)
    caller = ulaw_silence(0.3) + ulaw_tone(500, 0.5) + ulaw_silence(1.9)
    with OtlpReceiver() as collector:
        async with ScriptedRealtimeServer(script) as server, \
                running_app(settings(server, collector.url)) as (app, host):
            await simulated_call(app, host, caller_audio=caller).run()
            await wait_until(lambda: not app.state.active_calls, "the call's end on the app's side")
            await app.state.tracing.shutdown(5.0)
    (call,) = collector.named("call")
    (reconnect,) = collector.named("realtime_reconnect")
    assert reconnect.parent_id == call.span_id and reconnect.status != 2
    assert reconnect.attributes["realtime.items_restored"] == 3  # greeting, caller, answer
    assert reconnect.attributes["realtime.drop_reason"]
    assert call.start_ns < reconnect.start_ns < reconnect.end_ns < call.end_ns
    assert call.attributes["call.outcome"] == "normal"


async def test_the_service_sends_its_last_spans_when_it_stops():
    """A real `telephony serve` stopped by SIGTERM after a call: its lifespan exports the call's
    trace (the batch interval here is a minute: nothing else would), with OTEL_SERVICE_NAME and
    OTEL_EXPORTER_OTLP_HEADERS as the SDK reads them, and the header's value nowhere in its log."""
    from telephony.serve.app import create_app

    secret = "stream-secret-for-traces"
    with OtlpReceiver() as collector:
        async with ScriptedRealtimeServer(Script(response_ms=500)) as server, httpx.AsyncClient() as client:
            port = free_port()
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
                   "REALTIME_URL": server.url, "REALTIME_API_KEY": "sk-test", "STREAM_SECRET": secret,
                   "TWILIO_VALIDATE_SIGNATURES": "false", "HOST": "127.0.0.1", "PORT": str(port),
                   "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": "telephony-test",
                   "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-key=trace-SECRET", "OTEL_BSP_SCHEDULE_DELAY": "60000"}
            service = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "telephony", "serve", cwd=ROOT, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                async def health() -> dict | None:
                    try:
                        return (await client.get(f"http://127.0.0.1:{port}/healthz")).json()
                    except httpx.TransportError:
                        return None
                await wait_until(health, "the service to start", timeout=20)
                signer = create_app(Settings(stream_secret=secret, twilio_validate_signatures=False))
                sim = simulated_call(signer, f"127.0.0.1:{port}", caller_audio=ulaw_silence(1.5))
                await sim.run()
                await wait_until(lambda: _idle(health), "the call's end in the service")
                assert not collector.spans  # still queued in the service
                service.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(service.wait(), 15)
            finally:
                if service.returncode is None:
                    service.kill()
                    await service.wait()
            log = (await service.stdout.read()).decode()
    assert code in (0, -signal.SIGTERM), log
    (call,) = collector.named("call")
    assert call.attributes["call.sid"] == sim.call_sid and call.attributes["call.outcome"] == "normal"
    assert call.resource["service.name"] == "telephony-test"
    assert collector.requests[0]["x-collector-key"] == "trace-SECRET"
    assert "trace-SECRET" not in log and "traces: exported to" in log


async def _idle(health) -> bool:
    state = await health()
    return state is not None and state["active_calls"] == 0


async def test_doctor_says_where_traces_go_and_never_a_header_value(monkeypatch):
    import io

    from telephony.ops.doctor import run_doctor

    base = dict(twilio_validate_signatures=False, realtime_api_key="k")
    out = io.StringIO()
    assert await run_doctor(Settings(**base), connect=False, out=out) == 0
    assert "Traces:           off" in out.getvalue()
    with OtlpReceiver() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=trace-SECRET,x-team=ops")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "phones")
        settings = Settings(**base, otel_exporter_otlp_endpoint=collector.url)
        out = io.StringIO()
        from telephony.ops.doctor import _traces  # the check alone: --connect would also dial the model

        assert await _traces(settings, connect=True, out=out)
        assert collector.requests[0]["x-collector-key"] == "trace-SECRET"  # the collector's key is used
    text = out.getvalue()
    assert (f"Traces:           on, OTLP/HTTP to {collector.url}/v1/traces as service 'phones'; "
            "headers x-collector-key, x-team (values not shown)") in text
    assert "Collector:        OK" in text and "trace-SECRET" not in text
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    out = io.StringIO()
    assert await run_doctor(Settings(**base, otel_exporter_otlp_endpoint="http://127.0.0.1:4317"),
                            connect=False, out=out) == 1
    assert "PROBLEM: OTEL_EXPORTER_OTLP_PROTOCOL is 'grpc'" in out.getvalue()


async def test_a_handed_over_call_has_a_handoff_span_on_each_instance(profile):
    """A deploy moves the call (serve/handoff.py): the old instance's trace ends with a handoff
    "out", the new one's starts with a handoff "in"; both carry the call's sid. The records are the
    core's own (on_handoff_result, a resumed session), the spans go through the real exporter."""
    from telephony.core.call import Call
    from telephony.ops.metrics import Metrics
    from telephony.ops.tracing import Tracing
    from telephony.serve.telemetry import CallObserver
    from telephony.wire import twilio as tw

    start = tw.Start(stream_sid="MZ1", call_sid="CA1", custom_parameters={"direction": "inbound"},
                     encoding="audio/x-mulaw", sample_rate=8000, channels=1)
    with OtlpReceiver() as collector:
        tracing = Tracing(f"{collector.url}/v1/traces", "beta")
        for side in ("old", "new"):
            call = Call(profile, "g711_ulaw")
            observer = CallObserver(Metrics(), None, {}, trace=tracing.call("twilio"))
            actions = call.on_twilio(start, 0.0)
            if side == "new":
                call.resumed = True  # the handoff's saved state was found (serve/handoff.py)
                actions += call.on_realtime_open(0.1) + call.on_twilio(tw.Stop(), 1.0)
            else:
                actions += call.on_handing_over() + call.on_handoff_result(moved=True, conversation_items=4)
            for action in actions:
                if type(action).__name__ == "Record":
                    observer.on_record(call, action)
            observer.close()
        await tracing.shutdown(5.0)
    calls = sorted(collector.named("call"), key=lambda c: c.start_ns)
    assert [c.attributes["call.sid"] for c in calls] == ["CA1", "CA1"]
    assert [c.attributes["call.outcome"] for c in calls] == ["handed_over", "normal"]
    assert calls[0].trace_id != calls[1].trace_id  # each instance's own trace, found by the sid
    handoffs = {s.attributes["handoff.direction"]: s for s in collector.named("handoff")}
    assert handoffs["out"].attributes["handoff.items"] == 4 and handoffs["out"].parent_id == calls[0].span_id
    assert handoffs["in"].parent_id == calls[1].span_id


async def test_a_call_on_openais_sip_route_is_traced_too(profile):
    """OpenAI answers, we steer over the sideband: the call's trace names the route, its turns
    carry no latency (the audio never passes through us), and end_call's reason (the model's
    words) stays out."""
    from dataclasses import replace

    from test_openai_sip import CALLER as SIP_CALLER
    from test_openai_sip import app_settings, peer_for, ring_and_wait

    script = Script(response_ms=600, speed=5.0, response_lengths={1: 1000},
                    tool_calls={1: ("end_call", '{"reason": "Ann said goodbye"}')})
    with OtlpReceiver() as collector:
        async with peer_for(script, caller_audio=SIP_CALLER, listen_s=6.0) as peer, \
                running_app(app_settings(peer, otel_exporter_otlp_endpoint=collector.url),
                            replace(profile, name="sip-desk")) as (app, host):
            call = await ring_and_wait(peer, host)
            await wait_until(lambda: not app.state.calls._calls, "the call's end on the app's side")
            await app.state.tracing.shutdown(5.0)
    (span,) = collector.named("call")
    assert {k: span.attributes[k] for k in ("call.sid", "call.route", "call.dialect", "call.profile",
                                            "call.outcome")} == {
        "call.sid": call.call_id, "call.route": "openai_sip", "call.dialect": "ga", "call.profile": "sip-desk",
        "call.outcome": "normal"}
    assert span.attributes["call.end_reason"] == "end_call"
    turns = collector.named("turn")
    assert len(turns) >= 2 and not any("turn.latency_ms" in t.attributes or "turn.answered" in t.attributes
                                       for t in turns)
    (tool,) = collector.named("tool_call")
    assert tool.attributes["tool.name"] == "end_call" and tool.attributes["tool.outcome"] == "ok"
    assert "Ann" not in json.dumps([(s.attributes, s.events) for s in collector.spans])
