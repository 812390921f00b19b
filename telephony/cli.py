"""The `telephony` command."""

from __future__ import annotations

import argparse
import logging
import sys

from telephony.core.profile import ProfileError
from telephony.settings import Settings, SettingsError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from telephony.ops import logs
    from telephony.serve.server import GracefulServer, tcp_socket, uvicorn_options

    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format, secrets=settings.secrets())
    options = dict(host=args.host or settings.host, port=args.port or settings.port,
                   log_config=None,  # uvicorn's loggers go through ours (JSON when asked)
                   log_level=settings.log_level.lower(), **uvicorn_options(settings))
    grace = settings.shutdown_grace_seconds
    if settings.call_history:  # the schema once, before any worker (each checks it is current)
        from telephony.history.database import database_for, migrate_at_start

        migrate_at_start(database_for(settings.database_url))
    if settings.web_concurrency > 1:
        # Workers are separate processes: each builds its own app from the environment and drains
        # on SIGTERM (serve/workers.py). The listening socket is ours, not uvicorn's: uvicorn binds
        # with protocol 0, and asyncio then leaves Nagle on for every call's socket (a barge-in
        # `clear` waits for an ACK).
        from telephony.serve.app import check_configuration
        from telephony.serve.workers import Supervisor, share_stream_key

        check_configuration(settings)  # a bad setting stops the service here, before any worker starts
        share_stream_key(settings)
        sock = tcp_socket(options["host"], options["port"])
        return Supervisor(settings.web_concurrency, options, sock, grace).run()
    else:
        from telephony.serve.app import create_app

        try:
            app = create_app(settings)
        except (SettingsError, ProfileError):
            raise
        except Exception as exc:  # noqa: BLE001 - as a worker does: not a crash to retry, a setting to fix
            raise SettingsError(f"the app cannot be built: {type(exc).__name__}: {exc}") from None
        GracefulServer(uvicorn.Config(app, **options), app.state.calls, grace).run()  # SIGTERM: drain
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import asyncio

    from telephony.ops.doctor import run_doctor

    return asyncio.run(run_doctor(Settings.from_env(), connect=args.connect, out=sys.stdout))


def _configure_number(args: argparse.Namespace, http_client=None) -> int:
    from twilio.base.exceptions import TwilioRestException

    from telephony.ops import twilio_admin

    settings = Settings.from_env()
    public_url = (args.url or settings.public_url or "").rstrip("/")
    if not public_url:
        print("telephony: configure-number needs the service's public URL: set PUBLIC_URL or pass --url",
              file=sys.stderr)
        return 2
    problems = twilio_admin.public_url_problems(public_url)
    if problems:
        print(f"telephony: {public_url}: {'; '.join(problems)}", file=sys.stderr)
        return 2
    try:
        twilio = twilio_admin.client(settings, http_client)
        hooks = twilio_admin.configure_number(twilio, args.number, public_url)
    except twilio_admin.TwilioAdminError as exc:
        print(f"telephony: {exc}", file=sys.stderr)
        return 1
    except TwilioRestException as exc:
        print(f"telephony: Twilio refused: {twilio_admin.describe_rest_error(exc)}", file=sys.stderr)
        return 1
    print(f"{args.number}: voice webhook POST {hooks.voice}")
    print(f"{args.number}: status callback    {hooks.status}")
    return 0


async def place_once(control, req, public_base: str, url: str):
    from telephony.serve.outbound import place

    try:
        return await place(control, req, public_base, url)
    finally:
        await control.aclose()


def _call(args: argparse.Namespace) -> int:
    """Places a call exactly as POST /calls does, from this machine's settings."""
    import asyncio
    import json
    import time

    from telephony.serve.app import OUTBOUND_URL_TTL_S
    from telephony.serve.outbound import RequestError, answer_url, parse_request
    from telephony.serve.security import StreamTokens, stream_key
    from telephony.serve.twilio_rest import CallControl, TwilioError

    settings = Settings.from_env()
    if not settings.public_url:
        print("telephony call: set PUBLIC_URL to the service's public https:// URL", file=sys.stderr)
        return 2
    body = {"to": args.to, **{k: v for k, v in (("from", args.from_), ("instructions", args.instructions),
                                                 ("greeting", args.greeting), ("voice", args.voice)) if v}}
    if args.machine_detection:
        body["machine_detection"] = True
    try:
        req = parse_request(json.dumps(body).encode(), settings.twilio_from_number)
        signer = StreamTokens(stream_key(settings), OUTBOUND_URL_TTL_S)
        url = answer_url(req, settings.public_url, signer, time.time())
        placed = asyncio.run(place_once(CallControl(settings), req, settings.public_url, url))
    except (RequestError, TwilioError) as exc:
        print(f"telephony call: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"call_sid": placed.sid, "status": placed.status}))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from telephony.offline import demo

    return demo.main(args.output, args.play, args.verbose, args.voice, args.tool, args.dialect, args.scenario,
                     args.carrier)


def _simulate(args: argparse.Namespace) -> int:
    if args.sip:
        from telephony.offline.sip_call import simulate_sip

        return simulate_sip(args.url, args.play, args.record, listen_s=args.listen, host=args.peer_host,
                            port=args.peer_port, caller=args.caller, callee=args.callee, voice=args.voice,
                            engine=args.engine, dtmf=args.dtmf)
    from telephony.offline.dial import simulate

    return simulate(args.url, args.play, args.record, listen_s=args.listen, hang_up_after_s=args.hang_up_after,
                    caller=args.caller, callee=args.callee, carrier_name=args.carrier,
                    options={"telnyx_private_key": args.telnyx_private_key})


def _keys(text: str) -> tuple[tuple[float, str], ...]:
    """``4.5:5,6:#`` → ((4.5, "5"), (6.0, "#")): keypad presses on a simulated SIP line."""
    keys = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        at, _, key = part.partition(":")
        try:
            seconds = float(at)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: the time is not a number of seconds") from None
        if len(key) != 1 or key not in "0123456789*#ABCD" or seconds < 0:
            raise argparse.ArgumentTypeError(f"{part!r}: expected SECONDS:KEY, KEY one of 0-9 * # A-D")
        keys.append((seconds, key))
    return tuple(keys)


def _realtime_server(args: argparse.Namespace) -> int:
    import asyncio

    from telephony.offline.local_engine import EngineConfig
    from telephony.offline.local_realtime import RealtimeServer
    from telephony.offline.voices import make_voice

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        async with RealtimeServer(make_voice(args.voice), EngineConfig(), args.host, args.port) as server:
            print(f"local Realtime engine (beta and GA protocols, voice: {server.persona.voice.name}) "
                  f"listening on {server.url}", flush=True)
            await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    from telephony.offline.callers import CARRIERS

    carrier_names = tuple(CARRIERS)
    parser = argparse.ArgumentParser(prog="telephony", description="Phone calls ⇄ Realtime voice models.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the web service (Twilio webhooks and media streams)")
    serve.add_argument("--host", default=None, help="interface to listen on (default: HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, default=None, help="port (default: PORT or 8000)")
    serve.set_defaults(func=_serve)
    doctor = sub.add_parser("doctor", help="check the configuration; --connect makes one Realtime handshake")
    doctor.add_argument("--connect", action="store_true", help="open one Realtime session and report it")
    doctor.set_defaults(func=_doctor)
    configure = sub.add_parser("configure-number",
                               help="point a Twilio number's voice webhook and status callback here")
    configure.add_argument("number", help="the number in E.164 form, e.g. +15551230000")
    configure.add_argument("--url", default=None, help="public base URL (default: PUBLIC_URL)")
    configure.set_defaults(func=_configure_number)
    call = sub.add_parser("call", help="place an outbound call to an E.164 number")
    call.add_argument("to", help="number to call, E.164 (+15551234567)")
    call.add_argument("--from", dest="from_", default=None, help="caller id (default TWILIO_FROM_NUMBER)")
    call.add_argument("--instructions", default=None, help="instructions for this call only")
    call.add_argument("--greeting", default=None, help="greeting for this call only")
    call.add_argument("--voice", default=None, help="voice for this call only")
    call.add_argument("--machine-detection", action="store_true", help="detect answering machines")
    call.set_defaults(func=_call)

    demo = sub.add_parser("demo", help="an offline call: the app, the local engine and a simulated caller")
    demo.add_argument("--output", default="demo-call.wav", help="stereo call recording to write")
    demo.add_argument("--play", default=None, help="caller WAV to use instead of the bundled one")
    demo.add_argument("--verbose", action="store_true", help="show the service's logs")
    demo.add_argument("--voice", choices=("auto", "espeak-ng", "synth"), default="auto",
                      help="agent voice: espeak-ng when installed (auto), or the built-in synthesiser")
    demo.add_argument("--tool", action="store_true",
                      help="the agent answers by calling a Python tool (lookup_order), end to end")
    demo.add_argument("--dialect", choices=("beta", "ga", "live"), default="beta",
                      help="the protocol the bridge and the local engine speak (live: no truncate)")
    demo.add_argument("--scenario", choices=("call", "backchannel"), default="call",
                      help='call: the bundled caller talks over the greeting and gets an answer; backchannel: '
                           'the caller only says "mm-hmm" over the greeting (is it still heard whole?)')
    demo.add_argument("--carrier", choices=carrier_names, default="twilio",
                      help="the carrier whose webhook and media stream the call goes over (its credentials "
                           "are generated for the run: the webhook is signed and checked)")
    demo.set_defaults(func=_demo)

    sim = sub.add_parser("simulate", help="place a simulated call over a carrier (Twilio by default; or, with "
                                          "--sip, a call through OpenAI's SIP route) to a running service")
    sim.add_argument("--url", required=True, help="the service, e.g. ws://127.0.0.1:8000/twilio/media-stream: the "
                                                  "carrier's webhook is posted to its voice path on that host "
                                                  "(/twilio/voice, /telnyx/voice…) and the stream URL taken from "
                                                  "the answer; with --sip the webhook URL, e.g. "
                                                  "http://127.0.0.1:8000/openai/sip")
    sim.add_argument("--carrier", choices=carrier_names, default="twilio",
                     help="whose protocol to speak: its signed webhook (TWILIO_AUTH_TOKEN, PLIVO_AUTH_TOKEN, "
                          "SIGNALWIRE_SIGNING_KEY from the environment, as the service reads them; Telnyx: "
                          "--telnyx-private-key), its markup and its media websocket")
    sim.add_argument("--telnyx-private-key", metavar="FILE", default=None,
                     help="with --carrier telnyx: the Ed25519 private key to sign the webhook with (PEM, or base64 "
                          "of its 32 raw bytes; default: TELNYX_PRIVATE_KEY, the key itself); the service's "
                          "TELNYX_PUBLIC_KEY must be its public half")
    sim.add_argument("--play", default=None, help="WAV the caller says (any rate, width, channels)")
    sim.add_argument("--record", default="call.wav", help="stereo WAV to write (caller left, agent right)")
    sim.add_argument("--listen", type=float, default=8.0, help="seconds to stay on after the WAV ends")
    sim.add_argument("--hang-up-after", type=float, default=1.5,
                     help="hang up once the agent has answered and been quiet this long (seconds)")
    sim.add_argument("--from", dest="caller", default="+15550100001", help="caller number (From)")
    sim.add_argument("--to", dest="callee", default="+15550100002", help="called number (To)")
    sim.add_argument("--sip", action="store_true",
                     help="play OpenAI's side of its SIP route: ring --url with a signed webhook "
                          "(OPENAI_WEBHOOK_SECRET), answer with the local engine; the service's "
                          "OPENAI_BASE_URL must point at --peer-host/--peer-port")
    sim.add_argument("--peer-host", default="127.0.0.1", help="with --sip: interface of OpenAI's side")
    sim.add_argument("--peer-port", type=int, default=8766, help="with --sip: its port (default 8766)")
    sim.add_argument("--voice", choices=("auto", "espeak-ng", "synth"), default="auto",
                     help="with --sip: the agent's voice (espeak-ng when installed, or the synthesiser)")
    sim.add_argument("--dtmf", type=_keys, default=(), metavar="SECONDS:KEY[,…]",
                     help="with --sip: keys the caller presses, e.g. 4.5:5,6:# (seconds from the answer)")
    sim.add_argument("--engine", choices=("realtime", "live"), default="realtime",
                     help="with --sip: the engine OpenAI offers: realtime (realtime.call.incoming, "
                          "/v1/realtime/calls) or live (GPT-Live: live.transport.incoming, "
                          "/v1/live/sessions, the /attach sideband)")
    sim.set_defaults(func=_simulate)

    rts = sub.add_parser("realtime-server", help="run the local Realtime engine as a websocket server")
    rts.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    rts.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    rts.add_argument("--voice", choices=("auto", "espeak-ng", "synth"), default="auto",
                     help="agent voice: espeak-ng when installed (auto), or the built-in synthesiser")
    rts.set_defaults(func=_realtime_server)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (SettingsError, ProfileError) as exc:  # a bad variable, or a profile that cannot be used
        print(f"telephony: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
