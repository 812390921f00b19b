"""TwiML documents the webhooks answer, built with the twilio package."""

from __future__ import annotations

from typing import Mapping

from twilio.twiml.voice_response import Connect, Dial, Refer, Start, VoiceResponse

# The paths Twilio reaches us on: webhooks (HTTP POST) and media streams (websocket).
VOICE_PATH = "/twilio/voice"
OUTBOUND_ANSWER_PATH = "/twilio/outbound"
STATUS_CALLBACK_PATH = "/twilio/status"
AMD_CALLBACK_PATH = "/twilio/amd"
TRANSCRIBE_AND_FORWARD_PATH = "/twilio/transcribe-and-forward"
MEDIA_STREAM_PATH = "/twilio/media-stream"
TRANSCRIBE_STREAM_PATH = "/twilio/transcribe-stream"


def websocket_url(public_base: str, path: str = MEDIA_STREAM_PATH) -> str:
    """https://host → wss://host/path (Twilio requires wss:// and no query string)."""
    if public_base.startswith("https://"):
        return "wss://" + public_base[len("https://"):] + path
    if public_base.startswith("http://"):
        return "ws://" + public_base[len("http://"):] + path
    raise ValueError(f"public base URL must be http(s)://, not {public_base!r}")


def connect_stream(stream_url: str, parameters: Mapping[str, str], fallback: str, announce: str = "") -> str:
    """<Connect><Stream> with the call's context as <Parameter>s, then a spoken fallback.

    Verbs after </Connect> run only when the stream ends, so the fallback is heard exactly
    when the bridge gives up on a call (model unreachable, fatal error). ``announce`` (a
    recording's consent line) is said by Twilio first, before the agent can speak.
    """
    response = VoiceResponse()
    if announce:
        response.say(announce)
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        if value:
            stream.parameter(name=name, value=value)
    response.append(connect)
    if fallback:
        response.say(fallback)
    response.hangup()
    return str(response)


def dial(target: str) -> str:
    """A live call's new TwiML for a transfer: <Dial> a number, or <Dial><Sip> a SIP URI (its
    ``?x-name=value`` part becomes custom headers on Twilio's INVITE)."""
    response = VoiceResponse()
    if _is_sip(target):
        sip_dial = Dial()
        sip_dial.sip(target)
        response.append(sip_dial)
    else:
        response.dial(target)
    return str(response)


def refer(target: str) -> str:
    """<Refer><Sip>: on a call that came in over SIP, ask the caller's side to reconnect to the
    sip: URI ``target`` itself, which frees Twilio's leg."""
    if not _is_sip(target):
        raise ValueError(f"<Refer><Sip> needs a sip: URI, not {target!r}")
    response = VoiceResponse()
    referral = Refer()
    referral.sip(target)
    response.append(referral)
    return str(response)


def transfer(target: str, by_refer: bool = False) -> str:
    return refer(target) if by_refer else dial(target)


def _is_sip(target: str) -> bool:
    return target.lower().startswith(("sip:", "sips:"))


def say_and_hang_up(message: str) -> str:
    response = VoiceResponse()
    if message:
        response.say(message)
    response.hangup()
    return str(response)


def fork_and_dial(stream_url: str, parameters: Mapping[str, str], number: str) -> str:
    """Fork both tracks one way to the transcriber, then connect the caller to ``number``."""
    response = VoiceResponse()
    start = Start()
    stream = start.stream(url=stream_url, track="both_tracks")
    for name, value in parameters.items():
        if value:
            stream.parameter(name=name, value=value)
    response.append(start)
    response.dial(number)
    return str(response)


def reject_busy() -> str:
    """<Reject reason="busy"/>: the caller hears a busy tone and we are not billed for the call."""
    response = VoiceResponse()
    response.reject(reason="busy")
    return str(response)
