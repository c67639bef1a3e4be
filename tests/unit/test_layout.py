"""The layout as the README and the layers contract state it: every module named, no upward import excused."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "src" / "playgate"


def _built_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## How it is built")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def test_the_layers_contract_ignores_no_upward_import() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [layers] = [c for c in pyproject["tool"]["importlinter"]["contracts"] if c["id"] == "layers"]
    assert layers.get("ignore_imports", []) == []


def test_the_readme_names_every_module_and_only_modules_that_exist() -> None:
    table = _built_section().split("The layers, top to bottom")[0]
    # Cells name `src/playgate/x.py`, then `y.py`, `pkg/`, `pkg/z.py` under src/playgate; `deploy/` and the top
    # `bench/` are folders of the repository.
    paths = re.findall(r"`([\w./]+(?:\.py|/))`", table)
    named = {n.removeprefix("src/playgate/") for n in paths if not n.startswith("deploy/") and n != "bench/"}
    missing = sorted(n for n in named if not (PACKAGE / n).exists())
    assert missing == []
    packages = {n for n in named if n.endswith("/")}
    modules = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    unnamed = sorted(m for m in modules if m not in named and not any(m.startswith(pkg) for pkg in packages))
    assert unnamed == []


def test_the_readme_lists_the_layers_of_the_contract() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [layers] = [c for c in pyproject["tool"]["importlinter"]["contracts"] if c["id"] == "layers"]
    stated = _built_section().split("The layers, top to bottom: ")[1].split(". A module")[0]
    as_listed = [[name.strip(" `\n") for name in layer.split(",")] for layer in stated.split(";")]
    expected = [[name.strip().removeprefix("playgate.") for name in layer.split("|")] for layer in layers["layers"]]
    assert as_listed == expected
