"""SignalWire's webhooks and REST API (its Twilio-compatible "LaML" Compatibility API).

- **Signature.** ``X-SignalWire-Signature`` (``X-Twilio-Signature`` is accepted by SignalWire's
  SDK as an alias) on a form webhook is Twilio's scheme keyed with the project's Signing Key:
  base64(HMAC-SHA1(key, URL + the form's fields sorted, name then value)). SignalWire's own SDK
  (``signalwire`` 2.1.1, ``request_validator.py``) checks a form webhook by calling the twilio
  package's ``RequestValidator``: so does this, with ``SIGNALWIRE_SIGNING_KEY``, over the
  ``PUBLIC_URL`` it called.
- **REST.** ``{SIGNALWIRE_SPACE_URL}/api/laml/2010-04-01/Accounts/{project}/Calls[/{sid}].json``
  with HTTP Basic ``project:token`` and Twilio's form fields: the twilio package's client,
  pointed there, places calls, hangs up (``Status=completed``) and transfers (new cXML ``<Dial>``).
"""

from __future__ import annotations

from starlette.requests import Request
from twilio.request_validator import RequestValidator

from telephony.serve.twilio_rest import REQUEST_TIMEOUT_S, CallControl, TwilioError
from telephony.settings import Settings

SIGNATURE_HEADERS = ("x-signalwire-signature", "x-twilio-signature")


class SignalWireControl(CallControl):
    """SignalWire's LaML API for calls: Twilio's client, another host, the project's credentials."""

    label = "SignalWire"

    def __init__(self, settings: Settings, timeout: float = REQUEST_TIMEOUT_S) -> None:
        if not (settings.signalwire_project_id and settings.signalwire_token and settings.signalwire_space_url):
            raise TwilioError(503, "SIGNALWIRE_PROJECT_ID, SIGNALWIRE_TOKEN and SIGNALWIRE_SPACE_URL are not set")
        self._connect(settings.signalwire_project_id, settings.signalwire_token,
                      str(settings.signalwire_space_url).rstrip("/") + "/api/laml", timeout)


class SignalWireSignatures:
    """Checks a SignalWire form webhook against the URL it called (``PUBLIC_URL`` + path + query)."""

    def __init__(self, signing_key: str) -> None:
        self._validator = RequestValidator(signing_key)

    async def refusal(self, request: Request, url: str) -> str | None:
        signature = next((request.headers[h] for h in SIGNATURE_HEADERS if h in request.headers), None)
        if not signature:
            return "no X-SignalWire-Signature"
        params = await request.form() if request.method == "POST" else {}
        if not self._validator.validate(url, params, signature):
            return f"signature does not match {url}"
        return None
