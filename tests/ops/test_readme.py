"""The README names every setting in its configuration table and every command in its Commands section, so that an
operator can find each knob and each tool."""

from __future__ import annotations

import re
from pathlib import Path

import click
from pydantic import AliasChoices

from playgate.cli import main
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


def test_the_commands_section_names_every_command_and_subcommand() -> None:
    section = README.read_text().split("\n## Commands", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z]+)[ `]", section))  # `serve`, `db upgrade`, `keys create|list|revoke`
    named |= {sub for listed in re.findall(r"`[a-z]+ ([a-z|]+)[ `]", section) for sub in listed.split("|")}
    missing = []
    for name, command in main.commands.items():
        if command.hidden:  # `member`: a process group's member, started by `serve --processes`
            continue
        if name not in named:
            missing.append(name)
        if isinstance(command, click.Group):
            missing += [f"{name} {sub}" for sub in command.commands if sub not in named]
    assert missing == []
