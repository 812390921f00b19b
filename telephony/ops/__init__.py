"""Operations: what an operator reads and runs to keep the service healthy.

Here: logging set-up (text or JSON, secrets scrubbed), Prometheus metrics, per-call JSONL records,
``telephony doctor`` and the Twilio number set-up behind ``telephony configure-number``.
May import: ``wire``, ``telephony.settings`` and, for the doctor's handshake, ``serve``'s Realtime
client. Never ``offline``.
"""
