"""The package's layering: each layer imports only the layers below it, and functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NMT = Path(__file__).resolve().parents[1] / "nmt"
# What each folder may import from nmt (besides itself and the shared modules at the top).
ALLOWED = {
    "model": set(),
    "search": set(),
    "engines": {"model", "search"},
    "training": {"model", "search", "engines"},
    "serving": {"model", "search", "engines"},
}
LAYERS = set(ALLOWED)


def nmt_imports(path: Path) -> set[str]:
    """The nmt modules ``path`` imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nmt"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nmt"))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer):
    for path in sorted((NMT / layer).glob("*.py")):
        for module in nmt_imports(path):
            parts = module.split(".")
            other = parts[1] if len(parts) > 1 else ""
            if other in LAYERS and other != layer:
                assert other in ALLOWED[layer], f"{path.relative_to(NMT.parent)} imports {module}"


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for path in sorted(NMT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(NMT.parent)}:{node.lineno} {node.name}")
    assert not long, long


def test_one_stopping_rule():
    """Beam search stops by ``nmt.search.core.sentences_done`` alone, in every driver."""
    users = sorted(p.relative_to(NMT).as_posix() for p in NMT.rglob("*.py") if "sentences_done(" in p.read_text())
    assert users == ["engines/cuda_graphs.py", "search/batched.py", "search/core.py", "search/single.py"]
    definitions = [p for p in NMT.rglob("*.py") if "def sentences_done" in p.read_text()]
    assert [p.relative_to(NMT).as_posix() for p in definitions] == ["search/core.py"]
