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


def _unclosed_fences(text: str) -> list[str]:
    """Where a fenced code block goes wrong: a fence with an info string inside a block (the block above was never
    closed, so the prose after it shows as code), or a block still open at the end."""
    faults = []
    opened_at = None
    for number, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r" {0,3}```(.*)$", line)
        if fence is None:
            continue
        info = fence[1].strip()
        if opened_at is None:
            opened_at = number
        elif info:
            faults.append(f"line {number}: ```{info} inside the block opened at line {opened_at}")
        else:
            opened_at = None
    if opened_at is not None:
        faults.append(f"the block opened at line {opened_at} is never closed")
    return faults


def test_every_code_block_of_the_docs_is_closed() -> None:
    """A stray fence turns the prose after it into code; the README's Performance section showed so for a while."""
    assert _unclosed_fences("```bash\nls\n```\nprose\n```\n```bash\nls\n```\n") == [
        "line 6: ```bash inside the block opened at line 5"
    ]
    root = README.parent
    for path in (README, root / "bench" / "README.md", *sorted((root / "docs").glob("*.md"))):
        assert _unclosed_fences(path.read_text()) == [], path.relative_to(root)
