"""The Realtime dialects by the name REALTIME_DIALECT gives them: a new dialect is one line here."""

from __future__ import annotations

from telephony.wire import live, realtime_beta, realtime_ga
from telephony.wire.realtime import Dialect

DIALECTS: dict[str, Dialect] = {"beta": realtime_beta, "ga": realtime_ga, "live": live}
