"""The layering of docs/contributing.md holds: numerics never import Lightning, nothing imports upward."""

from __future__ import annotations

import ast
from pathlib import Path

import gddim_lightning

PACKAGE = Path(gddim_lightning.__file__).parent

#: layer of each top-level part of the package (lower number = higher in the diagram)
LAYERS = {"_warn": 0, "limits": 0, "files": 0, "sdes": 1, "samplers": 2, "oracles": 3, "nets": 3, "evaluation": 3,
          "visuals": 3, "data": 3}
NUMERICS = ("sdes", "samplers", "oracles", "nets")


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported top-level part of the package or external module, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    depth = len(path.relative_to(PACKAGE).parts) - 1
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.append((node.module or "", node.lineno))
            else:
                up = node.level - 1
                if up > depth:
                    continue
                base = list(path.relative_to(PACKAGE).parts[: depth - up])
                mod = ".".join(["gddim_lightning", *base, *(node.module.split(".") if node.module else [])])
                names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
                out += [(n, node.lineno) for n in names]
    return out


def test_layers_import_only_upward_and_numerics_never_import_lightning():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        for name, line in _imports(path):
            if part in NUMERICS and name.split(".")[0] in ("lightning", "pytorch_lightning"):
                problems.append(f"{path.relative_to(PACKAGE)}:{line} imports {name} (numerics stay Lightning-free)")
            if name.startswith("gddim_lightning.") and part in LAYERS:
                target = name.split(".")[1]
                if target in LAYERS and LAYERS[target] > LAYERS[part]:
                    problems.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}, a lower layer")
                if target not in LAYERS and target != "__init__":
                    problems.append(f"{path.relative_to(PACKAGE)}:{line} imports {name} from the Lightning layer")
    assert not problems, "\n".join(problems)
