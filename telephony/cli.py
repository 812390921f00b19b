"""The `telephony` command."""

from __future__ import annotations

import argparse
import logging
import sys

from .settings import Settings, SettingsError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from . import logs

    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format, secrets=settings.secrets())
    options = dict(host=args.host or settings.host, port=args.port or settings.port,
                   # Behind Heroku's router: X-Forwarded-Proto makes the stream URL wss://.
                   proxy_headers=True, forwarded_allow_ips="*",
                   log_config=None,  # uvicorn's loggers go through ours (JSON when asked)
                   log_level=settings.log_level.lower())
    if settings.web_concurrency > 1:
        # Workers are separate processes: each builds its own app from the environment.
        uvicorn.run("telephony.cli:worker_app", factory=True, workers=settings.web_concurrency, **options)
    else:
        from .app import create_app

        uvicorn.run(create_app(settings), **options)
    return 0


def worker_app():
    """The app factory one uvicorn worker calls (WEB_CONCURRENCY > 1)."""
    from . import logs
    from .app import create_app

    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format, secrets=settings.secrets())
    return create_app(settings)


def _doctor(args: argparse.Namespace) -> int:
    import asyncio

    from .doctor import run_doctor

    return asyncio.run(run_doctor(Settings.from_env(), connect=args.connect, out=sys.stdout))


def _configure_number(args: argparse.Namespace, http_client=None) -> int:
    from twilio.base.exceptions import TwilioRestException

    from . import twilio_admin

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


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"telephony: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
