"""The README's configuration table names every setting, so that an operator can find each knob."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices

from playgate.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_configuration_table() -> None:
    documented = set(re.findall(r"^\| `(PLAYGATE_[A-Z_]+)`", README.read_text(), re.M))
    expected = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        first = alias.choices[0] if isinstance(alias, AliasChoices) else None
        expected.add(first if isinstance(first, str) else f"PLAYGATE_{name.upper()}")
    assert expected - documented == set()


def test_the_operations_section_covers_deploy_configure_observe_upgrade() -> None:
    section = README.read_text().split("## Operations", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^### (\w+)", section, re.M) == ["Deploy", "Configure", "Observe", "Upgrade"]
    for path in re.findall(r"`(deploy/[\w./-]+)`", section):
        assert (README.parent / path).exists(), path
