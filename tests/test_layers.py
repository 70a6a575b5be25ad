"""Imports run one way through borrowcore's folders (STYLE, "The house"; borrowcore/__init__.py).

Every import in every module counts, at module level or inside a function, absolute or relative: a module
may import its own layer and the tiers below it, never a tier above, nor the other layer of its own tier.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Tiers, lowest first. "" is the package itself (borrowcore/__init__.py, the public API).
TIERS = (
    ("utils", "version"),
    ("data", "models"),  # data never imports the model, nor the model data
    ("evaluation",),
    ("engine", "deploy"),
    ("cli", ""),
    ("__main__",),
)
TIER = {layer: rank for rank, layers in enumerate(TIERS) for layer in layers}
APP = ("viewer", "pages")  # the Streamlit app, which uses borrowcore and is never used by it


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """borrowcore.models.neck -> "models"; borrowcore -> ""."""
    return module.split(".")[1] if "." in module else ""


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file, relative ones resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module))
    return found


def violations(root: Path = ROOT) -> list[str]:
    wrong = []
    for path in sorted((root / "borrowcore").rglob("*.py")):
        own = layer(module_name(path, root))
        for line, module in imports(path, root):
            where = f"{path.relative_to(root)}:{line} imports {module}"
            top = module.split(".")[0]
            if top in APP:
                wrong.append(f"{where} (the app)")
            elif top == "borrowcore" and layer(module) != own and TIER[layer(module)] >= TIER[own]:
                wrong.append(f"{where} ({own or 'borrowcore'} may not import {layer(module) or 'borrowcore'})")
    return wrong


def test_every_module_has_a_declared_layer():
    undeclared = {layer(module_name(p)) for p in (ROOT / "borrowcore").rglob("*.py")} - set(TIER)
    assert not undeclared, f"add these to TIERS (and to the list in borrowcore/__init__.py): {sorted(undeclared)}"


def test_imports_run_one_way():
    wrong = violations()
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    models = tmp_path / "borrowcore" / "models"
    models.mkdir(parents=True)
    (tmp_path / "borrowcore" / "__init__.py").write_text("")
    (models / "__init__.py").write_text("")
    (models / "head.py").write_text("from .neck import Neck\nfrom ..utils.atomic import atomic_write\n\n\n"
                                    "def f():\n    from ..evaluation import report\n    import borrowcore.data.coco\n"
                                    "    from borrowcore import load_detector\n    import viewer.models\n")
    assert imports(models / "head.py", tmp_path)[:2] == [(1, "borrowcore.models.neck"), (2, "borrowcore.utils.atomic")]
    assert [line.split(" (")[0] for line in violations(tmp_path)] == [
        "borrowcore/models/head.py:6 imports borrowcore.evaluation",
        "borrowcore/models/head.py:7 imports borrowcore.data.coco",
        "borrowcore/models/head.py:8 imports borrowcore",
        "borrowcore/models/head.py:9 imports viewer.models",
    ]
