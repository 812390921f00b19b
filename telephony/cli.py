"""The `telephony` command."""

from __future__ import annotations

import argparse
import logging
import sys

from .settings import Settings, SettingsError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .security import RedactingFilter
    from .server import GracefulServer, ws_max_size

    settings = Settings.from_env()
    port = args.port or settings.port
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(settings.secrets()))
    app = create_app(settings)
    config = uvicorn.Config(app, host=args.host or settings.host, port=port, proxy_headers=True,
                            forwarded_allow_ips="*", log_level=settings.log_level.lower(),
                            ws_max_size=ws_max_size(settings))
    GracefulServer(config, app.state.calls, settings.shutdown_grace_seconds).run()  # SIGTERM: drain calls, then stop
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telephony", description="Phone calls ⇄ Realtime voice models.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the web service (Twilio webhooks and media streams)")
    serve.add_argument("--host", default=None, help="interface to listen on (default: HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, default=None, help="port (default: PORT or 8000)")
    serve.set_defaults(func=_serve)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"telephony: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
