"""The layering holds: bench -> flows -> tasks -> storage -> aurad_models, and no module imports from a
layer above its own (read from the source with ast, so a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["aurad_models", "storage", "tasks", "flows", "bench"]  # lowest first


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_no_module_imports_from_a_layer_above_its_own():
    violations = []
    for rank, layer in enumerate(LAYERS):
        for path in sorted((REPO / layer).rglob("*.py")):
            for line, module in _imports(path):
                top = module.split(".")[0]
                if top in LAYERS and LAYERS.index(top) > rank:
                    violations.append(f"{path.relative_to(REPO)}:{line} imports {module} ({top} is above {layer})")
    assert not violations, "\n".join(violations)
