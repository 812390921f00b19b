"""Which profile answers a call: one per called number, from a directory of profiles.

``AGENT_PROFILE`` names one profile file (it answers every call) or a directory of them. In a
directory, each ``*.toml`` is a profile named by its file's stem; ``default.toml`` answers the
numbers no profile lists. The choice is made where the call arrives (the voice webhook, or
``POST /calls``) and travels with the call as the signed ``profile`` stream parameter, so any
instance that serves the stream picks the same one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from telephony.core.profile import Profile, ProfileError, load_profile

log = logging.getLogger("telephony.profiles")

DEFAULT_NAME = "default"


def address_key(address: str) -> str:
    """A called number as profiles list it: E.164 as is; a sip: URI lower-cased, without parameters."""
    address = address.strip()
    if address.lower().startswith("sip:"):
        return address.split(";", 1)[0].lower()
    return address


@dataclass(frozen=True)
class Profiles:
    default: Profile
    by_name: dict[str, Profile] = field(default_factory=dict)
    by_number: dict[str, Profile] = field(default_factory=dict)

    @classmethod
    def of(cls, profiles: list[Profile], default: Profile) -> "Profiles":
        by_number: dict[str, Profile] = {}
        for profile in profiles:
            for number in profile.numbers:
                key = address_key(number)
                if key in by_number and by_number[key] is not profile:
                    raise ProfileError(f"number {number} is listed by profiles {by_number[key].name!r} "
                                       f"and {profile.name!r}")
                by_number[key] = profile
        return cls(default, {p.name: p for p in profiles}, by_number)

    @classmethod
    def single(cls, profile: Profile) -> "Profiles":
        return cls.of([profile], profile)

    def for_number(self, called: str) -> Profile:
        """The profile that answers calls to ``called`` (Twilio's ``To``, or a SIP To URI).

        A ``sip:+15551234567@host`` URI no profile lists is answered by the profile that lists its
        user part, ``+15551234567`` (SIP trunks carry the dialled number there)."""
        key = address_key(called)
        found = self.by_number.get(key)
        if found is None and key.startswith("sip:"):
            user = key[4:].split("@", 1)[0]
            found = self.by_number.get(user) if user.startswith("+") else None
        return found or self.default

    def named(self, name: str) -> Profile:
        """The profile a call's parameters name; the default when none (or an unknown one) is named."""
        if not name:
            return self.default
        profile = self.by_name.get(name)
        if profile is None:  # e.g. removed by a deploy while the call rang
            log.warning("profile %r is not loaded here; the default profile answers", name)
            return self.default
        return profile

    def all(self) -> list[Profile]:
        return list({id(p): p for p in (self.default, *self.by_name.values())}.values())


def load_profiles(path: Path) -> Profiles:
    """A profile file (it answers every call), or a directory of them with a ``default.toml``."""
    if not path.is_dir():
        return Profiles.single(load_profile(path))
    files = sorted(path.glob("*.toml"))
    if not any(f.stem == DEFAULT_NAME for f in files):
        raise ProfileError(f"{path}: a directory of profiles needs {DEFAULT_NAME}.toml (it answers the "
                           f"numbers no profile lists)")
    profiles = [load_profile(f) for f in files]
    return Profiles.of(profiles, next(p for p in profiles if p.name == DEFAULT_NAME))
