"""The package's shape: every module imports, and imports run down the layers, never up.

core and wire are the sans-I/O bottom; serve, ops and offline sit above them; serve reaches the
offline engine through one seam (serve/upstream.py). history (the call-history database) stands
apart: it takes records as plain data, and serve feeds it.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import telephony

PACKAGE = Path(telephony.__file__).parent
REPO = PACKAGE.parent
LAYERS = ("core", "wire", "serve", "ops", "offline", "history")
# What each layer may import from the package, besides itself and the top-level settings.
ALLOWED = {
    "wire": set(),
    "core": {"wire"},
    "ops": {"wire", "core", "serve"},
    "serve": {"wire", "core", "ops", "history"},
    "history": set(),
    "offline": {"wire", "core", "serve", "ops"},
}
# The blocking or networking modules the sans-I/O layers must never touch.
IO_MODULES = {"asyncio", "socket", "time", "websockets", "starlette", "uvicorn", "picows", "httpx", "threading"}


def all_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(telephony.__path__, "telephony.") if m.name != "telephony.__main__"]


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package imports absolutely")
    return found


@pytest.mark.parametrize("name", all_modules())
def test_every_module_imports(name):
    importlib.import_module(name)


def test_the_layers_are_the_folders():
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(LAYERS)
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "__main__", "cli", "settings"}
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"{layer}/__init__.py must say what lives there and what it may import"


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_run_down_the_layers(layer):
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in imports_of(path):
            parts = name.split(".")
            if parts[0] != "telephony" or len(parts) < 2 or parts[1] not in LAYERS or parts[1] == layer:
                continue
            seam = layer == "serve" and parts[1] == "offline" and path.name == "upstream.py"
            assert parts[1] in ALLOWED[layer] or seam, f"{path.relative_to(REPO)} imports {name}"


@pytest.mark.parametrize("layer", ("core", "wire"))
def test_the_core_and_the_wire_do_no_io(layer):
    for path in sorted((PACKAGE / layer).glob("*.py")):
        roots = {name.split(".")[0] for name in imports_of(path)}
        assert not roots & IO_MODULES, f"{path.relative_to(REPO)} imports {sorted(roots & IO_MODULES)}"


def test_the_bundled_profile_is_the_one_in_config():
    """config/agent.toml is what users copy; the package carries the same bytes for every install."""
    assert (PACKAGE / "profiles" / "agent.toml").read_bytes() == (REPO / "config" / "agent.toml").read_bytes(), \
        "config/agent.toml changed: copy it to telephony/profiles/agent.toml"
