"""Wire formats: one module per protocol, each mapping its messages onto neutral events and back.

Here: Twilio Media Streams (``twilio``), TwiML and our URL paths (``twiml``), the neutral Realtime
vocabulary (``realtime``), one module per Realtime dialect (``realtime_beta``, ``realtime_ga``) and
the registry that names them (``dialects``). Pure functions and frozen data; no I/O.
May import: the standard library and orjson. Never ``core``, ``serve``, ``ops`` or ``offline``.
"""
