"""Which profile answers a called address: E.164, sip: URIs, and a SIP URI carrying a listed number."""

from __future__ import annotations

from dataclasses import replace

from telephony.core.profile import Profile
from telephony.core.profile_choice import Profiles


def profiles() -> Profiles:
    default = Profile(instructions="d", name="default")
    sales = Profile(instructions="s", name="sales", numbers=("+15550002222", "sip:Sales@Example.com"))
    return Profiles.of([default, sales, replace(default, name="other", numbers=("+15550003333",))], default)


def test_a_listed_number_or_uri_picks_its_profile_and_others_get_the_default():
    chosen = profiles()
    assert chosen.for_number("+15550002222").name == "sales"
    assert chosen.for_number("sip:sales@example.com;transport=tls").name == "sales"
    assert chosen.for_number("+15550009999").name == "default"
    assert chosen.for_number("sip:nobody@example.com").name == "default"


def test_a_sip_uri_whose_user_part_is_a_listed_number_picks_that_profile():
    """SIP trunks (and OpenAI's SIP route) carry the dialled number as the URI's user part."""
    chosen = profiles()
    assert chosen.for_number("sip:+15550002222@sip.api.openai.com").name == "sales"
    assert chosen.for_number("sip:+15550003333@trunk.example.com;user=phone").name == "other"
    assert chosen.for_number("sip:15550002222@trunk.example.com").name == "default"  # not E.164
