"""The `telephony` command."""

from __future__ import annotations

import argparse
import logging
import sys

from .settings import Settings, SettingsError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    settings = Settings.from_env()
    port = args.port or settings.port
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(app, host=args.host or settings.host, port=port, proxy_headers=True,
                forwarded_allow_ips="*", log_level=settings.log_level.lower())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.main(args.output, args.play, args.verbose, args.voice)


def _simulate(args: argparse.Namespace) -> int:
    from .dial import simulate

    return simulate(args.url, args.play, args.record, listen_s=args.listen, hang_up_after_s=args.hang_up_after,
                    caller=args.caller, callee=args.callee)


def _realtime_server(args: argparse.Namespace) -> int:
    import asyncio

    from .local_engine import EngineConfig
    from .local_realtime import RealtimeServer
    from .voices import make_voice

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        async with RealtimeServer(make_voice(args.voice), EngineConfig(), args.host, args.port) as server:
            print(f"local Realtime engine (beta protocol, voice: {server.persona.voice.name}) "
                  f"listening on {server.url}", flush=True)
            await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telephony", description="Phone calls ⇄ Realtime voice models.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the web service (Twilio webhooks and media streams)")
    serve.add_argument("--host", default=None, help="interface to listen on (default: HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, default=None, help="port (default: PORT or 8000)")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="an offline call: the app, the local engine and a simulated caller")
    demo.add_argument("--output", default="demo-call.wav", help="stereo call recording to write")
    demo.add_argument("--play", default=None, help="caller WAV to use instead of the bundled one")
    demo.add_argument("--verbose", action="store_true", help="show the service's logs")
    demo.add_argument("--voice", choices=("auto", "espeak-ng", "synth"), default="auto",
                      help="agent voice: espeak-ng when installed (auto), or the built-in synthesiser")
    demo.set_defaults(func=_demo)

    sim = sub.add_parser("simulate", help="place a simulated Twilio call to a running service")
    sim.add_argument("--url", required=True, help="media stream URL, e.g. ws://127.0.0.1:8000/twilio/media-stream"
                                                  " (the TwiML is fetched from /twilio/voice on that host)")
    sim.add_argument("--play", default=None, help="WAV the caller says (any rate, width, channels)")
    sim.add_argument("--record", default="call.wav", help="stereo WAV to write (caller left, agent right)")
    sim.add_argument("--listen", type=float, default=8.0, help="seconds to stay on after the WAV ends")
    sim.add_argument("--hang-up-after", type=float, default=1.5,
                     help="hang up once the agent has answered and been quiet this long (seconds)")
    sim.add_argument("--from", dest="caller", default="+15550100001", help="caller number (From)")
    sim.add_argument("--to", dest="callee", default="+15550100002", help="called number (To)")
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
    except SettingsError as exc:
        print(f"telephony: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
