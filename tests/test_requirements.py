"""requirements.txt (what Heroku installs) agrees with pyproject.toml (what the package declares)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def pinned_lines() -> list[str]:
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def pins() -> dict[str, str]:
    """name → the version it is pinned to (every line but the package's own "." is name==version)."""
    result = {}
    for line in pinned_lines():
        if line == ".":
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)(\s*;.*)?", line)
        assert match, f"requirements.txt: {line!r} is not pinned with =="
        result[canonicalize_name(match[1])] = match[2]
    return result


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution these need, on any platform (markers ignored, but for the extras asked
    for), as far as the installed metadata tells."""
    seen: set[str] = set()
    walked: set[tuple[str, frozenset[str]]] = set()
    todo = [r for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))  # sqlalchemy[asyncio] needs more than alembic's plain sqlalchemy
        if key in walked:
            continue
        walked.add(key)
        seen.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            dep = Requirement(text)
            if dep.marker is None or "extra" not in str(dep.marker) or any(
                    dep.marker.evaluate({"extra": extra}) for extra in req.extras):  # e.g. pyjwt[crypto]
                todo.append(dep)
    return seen


def test_requirements_pins_every_declared_dependency_within_its_range():
    locked = pins()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is declared in pyproject.toml but not in requirements.txt"
        assert req.specifier.contains(locked[name], prereleases=True), \
            f"requirements.txt pins {req.name}=={locked[name]}, outside pyproject's {req.specifier}"


def test_requirements_has_nothing_stale_and_installs_the_package_itself():
    needed = closure(declared())
    stale = sorted(set(pins()) - needed)
    assert not stale, f"requirements.txt pins what pyproject.toml no longer needs: {stale}"
    assert pinned_lines()[-1] == ".", "requirements.txt must end with '.', the package itself"


def test_requirements_has_no_index_urls_or_local_paths():
    text = (ROOT / "requirements.txt").read_text()
    for line in pinned_lines():
        assert not line.startswith("-"), f"requirements.txt: option {line!r} (no index URLs or flags)"
        assert "://" not in line and "@" not in line, f"requirements.txt: {line!r} names a URL"
    assert "/" not in text.replace("scripts/compile_requirements.sh", ""), "requirements.txt has a path"
