"""The package's layering (docs/architecture.md, "Layers"): every import inside ``src/dpda``,
lazy ones in functions included, points from a unit to one in a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"

#: Layer of each unit (a subpackage or a top-level module of ``dpda``); ``dpda`` is the package's
#: own ``__init__`` (its version).
LAYERS = {
    "dpda": 0,
    "atomic": 0,
    "suggest": 0,
    "errors": 0,
    "markdown": 0,
    "names": 0,
    "paths": 0,
    "align": 0,
    "config": 1,
    "data": 2,
    "models": 2,
    "checkpoint": 2,
    "results": 2,
    "dualpath": 3,
    "augment": 3,
    "evaluate": 4,
    "train": 5,
    "corpus": 6,
    "report": 6,
    "landscape": 6,
    "deploy": 6,
    "demo": 7,
    "cli": 8,
    "__main__": 9,
}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SOURCE).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported dpda module) of every import statement in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "dpda":
            names = [node.module] if node.module != "dpda" else [f"dpda.{a.name}" for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "dpda"]
    return found


def test_every_unit_has_a_layer():
    units = {unit(module_name(path)) for path in (SOURCE / "dpda").rglob("*.py")}
    assert units == set(LAYERS), f"give these units a layer: {sorted(units - set(LAYERS))}"


def test_imports_point_down_only():
    upward = []
    for path in sorted((SOURCE / "dpda").rglob("*.py")):
        source = unit(module_name(path))
        for line, target in imports(path):
            target_unit = unit(target) if target != "dpda" else "dpda"
            if target_unit in LAYERS and target_unit != source and LAYERS[target_unit] >= LAYERS[source]:
                upward.append(
                    f"{path.relative_to(SOURCE)}:{line} {source} (layer {LAYERS[source]}) imports "
                    f"{target} (layer {LAYERS[target_unit]})"
                )
    assert not upward, "\n".join(upward)


def test_the_walk_sees_lazy_and_from_package_imports(tmp_path):
    """The check cannot pass by not looking: imports inside functions and ``from dpda import x``
    are found."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from dpda.train import trainer\n\nfrom dpda import report\nimport dpda.cli\n")
    assert sorted(imports(sample)) == [(2, "dpda.train"), (4, "dpda.report"), (5, "dpda.cli")]
