"""The package layers of docs/architecture.md: no module imports from its own layer's other packages or
from a layer above, and nothing but the entry point imports the CLI."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "embedlab"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
ENTRY_POINT = "embedlab.__main__"
PACKAGE_API = "embedlab"  # the package's own __init__: the public API sits above every layer


def documented_layers(text: str) -> list[set[str]]:
    """The ```layers block of docs/architecture.md (top layer first) as sets of names, lowest first."""
    block = re.search(r"```layers\n(.*?)```", text, re.DOTALL)
    assert block is not None, f"{ARCHITECTURE} has no ```layers block"
    rows = [line.split("#")[0].split() for line in block.group(1).splitlines()]
    return [set(names) for names in reversed(rows) if names]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """What a layer lists: the package under embedlab, or a top-level module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE_API


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every embedlab module that `source` (the text of `module`) imports, at the top or in a function."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            else:
                found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name == PACKAGE_API or name.startswith(f"{PACKAGE_API}.")}


def layer_of(unit: str, layers: list[set[str]]) -> int:
    for level, names in enumerate(layers):
        if unit in names:
            return level
    raise AssertionError(f"{unit} is in no layer of the ```layers block of {ARCHITECTURE}")


def imports_against_the_flow(module: str, imports: set[str], layers: list[set[str]]) -> list[str]:
    """The imports of `module` that reach its own layer's other units, a layer above, or the API."""
    if module in (PACKAGE_API, ENTRY_POINT):
        return []
    unit = unit_of(module)
    level = layer_of(unit, layers)
    return [
        target
        for target in sorted(imports)
        if target == PACKAGE_API or (unit_of(target) != unit and layer_of(unit_of(target), layers) >= level)
    ]


def source_files() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def imports_of(path: Path) -> set[str]:
    return imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")


LAYERS = documented_layers(ARCHITECTURE.read_text())


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(path)) for path in source_files()} - {PACKAGE_API, "__main__"}
    listed = set().union(*LAYERS)
    assert sorted(units - listed) == [], f"missing from the ```layers block of {ARCHITECTURE}"
    assert sorted(listed - units) == [], f"listed in {ARCHITECTURE} but not in src/embedlab"


@pytest.mark.parametrize("path", source_files(), ids=module_name)
def test_no_module_imports_against_the_flow(path: Path) -> None:
    module = module_name(path)
    assert imports_against_the_flow(module, imports_of(path), LAYERS) == [], (
        f"{module} imports from its own layer's other packages or from above (docs/architecture.md)"
    )


def test_only_the_entry_point_imports_the_cli() -> None:
    importers = [
        module_name(path)
        for path in source_files()
        if unit_of(module_name(path)) != "cli" and any(unit_of(t) == "cli" for t in imports_of(path))
    ]
    assert set(importers) <= {ENTRY_POINT}, importers


def test_the_check_finds_imports_up_sideways_and_relative() -> None:
    layers = [{"atomic"}, {"data"}, {"models", "losses"}, {"serving"}]
    source = (
        "from embedlab.serving.index import load_index\n"
        "from .splits import make_split\n"
        "def later():\n    import embedlab.losses.registry\n"
        "from embedlab.atomic import write_atomic\n"
    )
    imports = imported_modules(source, "embedlab.models.embedder", is_package=False)
    assert imports == {
        "embedlab.serving.index",
        "embedlab.models.splits",
        "embedlab.losses.registry",
        "embedlab.atomic",
    }
    wrong = imports_against_the_flow("embedlab.models.embedder", imports, layers)
    assert wrong == ["embedlab.losses.registry", "embedlab.serving.index"]
    assert imports_against_the_flow("embedlab.data.x", {"embedlab"}, layers) == ["embedlab"]
