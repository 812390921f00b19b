"""The call core, sans I/O: a call is a plain object told what happened and answering with actions.

Here: the call (``call``), its playout ledger, the actions it returns, the built-in tools, the agent
profile, the audio codecs, and the core of a transcribed (forked) call. Nothing here reads a socket,
sleeps or looks at a clock: time comes in as ``now``.
May import: ``telephony.wire`` and the standard library (numpy and audioop for audio). Never
``serve``, ``ops`` or ``offline``.
"""
