"""docs/errors.md lists every error and warning class mechscope defines, so a user who meets
one can look up what it means."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import mechscope.data.corpora
import mechscope.errors

ROOT = Path(__file__).resolve().parent.parent


def _defined_classes() -> set[str]:
    """Every exception or warning class defined in mechscope's source (parsed, not imported)."""
    names = set()
    for path in (ROOT / "mechscope").rglob("*.py"):
        names |= set(re.findall(r"^class (\w+(?:Error|Warning))\(", path.read_text(), flags=re.MULTILINE))
    return names


def test_every_error_class_is_documented():
    documented = set(re.findall(r"^\| `(\w+)`", (ROOT / "docs" / "errors.md").read_text(), flags=re.MULTILINE))
    defined = _defined_classes()
    assert defined - documented == set(), "add these to docs/errors.md"
    assert documented - defined == set(), "docs/errors.md lists classes that no longer exist"


def test_every_error_class_is_a_mechscope_error_or_warning():
    for name in _defined_classes():
        cls = getattr(mechscope.errors, name, None) or getattr(mechscope.data.corpora, name)
        assert inspect.isclass(cls)
        assert issubclass(cls, (mechscope.errors.MechscopeError, mechscope.errors.MechscopeWarning)), name
