"""The library's layers hold: import contracts, imports at module level, a light command line.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and are drawn in
``docs/design.md`` ("Layers"). import-linter reads every import, those inside functions
included; the other tests here keep the code honest so that what it reads is the real
dependency graph: imports sit at module level except for the optional dependencies in
:data:`OPTIONAL`, and modules are loaded by name only at the documented places.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIBRARY = os.path.join(ROOT, "CalibSegLib")

#: Optional dependencies imported where they are used (inside functions), so that the
#: library works without them: the ``federated``, ``dicom``, ``explain`` and ``nnunet``
#: extras, matplotlib (figures only) and PyYAML (YAML bundle configs only).
OPTIONAL = {
    "flwr",  # Flower (extra: federated)
    "highdicom", "pydicom",  # DICOM SEG / parametric maps (extra: dicom)
    "matplotlib",  # figures of reports and diagrams
    "captum",  # attribution methods (extra: explain)
    "nnunetv2", "dynamic_network_architectures", "acvl_utils",  # nnU-Net v2 (extra: nnunet)
    "yaml",  # MONAI bundles with YAML configs
}

#: The only places that load modules by name (``importlib.import_module``): the command
#: line (interfaces discovered, a workflow loaded after its checks) and the lazy exports
#: of packages whose light modules the command line reads (training.config, data.case).
DYNAMIC_IMPORTS = {"CalibSegLib/cli.py", "CalibSegLib/training/__init__.py",
                   "CalibSegLib/data/__init__.py"}

#: What the command line must not load before a command's checks passed.
HEAVY = ("torch", "monai", "SimpleITK", "nibabel", "numba", "flwr", "matplotlib")


def _library_files() -> list[str]:
    out = []
    for base, dirs, names in os.walk(LIBRARY):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out += [os.path.join(base, n) for n in names if n.endswith(".py")]
    return sorted(out)


def _relative(path: str) -> str:
    return os.path.relpath(path, ROOT).replace(os.sep, "/")


def _function_imports(path: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import statement inside a function of ``path``."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if in_function and isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif in_function and isinstance(child, ast.ImportFrom):
                found.append((child.lineno, "." * child.level + (child.module or "")))
            visit(child, inside)

    visit(tree, False)
    return found


def test_import_contracts_hold():
    """import-linter's contracts from pyproject.toml, on a fresh graph (no cache)."""
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    done = subprocess.run([lint, "--no-cache", "--config", os.path.join(ROOT, "pyproject.toml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_imports_sit_at_module_level_except_optional_dependencies():
    offenders = []
    for path in _library_files():
        name = _relative(path)
        for line, module in _function_imports(path):
            if module.split(".")[0] in OPTIONAL:
                continue
            offenders.append(f"{name}:{line}: {module}")
    assert not offenders, ("imports inside functions (move them to the top of the module, or "
                           "add an optional dependency to OPTIONAL and docs/design.md):\n"
                           + "\n".join(offenders))


def _import_cycles() -> list[set[str]]:
    """Groups of modules that import each other (strongly connected, imports in functions
    included), from grimp's graph of the library."""
    import grimp

    graph = grimp.build_graph("CalibSegLib", cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules)
             for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in edges[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(group)

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles():
    cycles = [sorted(c) for c in _import_cycles()]
    assert not cycles, f"modules importing each other: {cycles}"


def test_function_level_import_finder_sees_nested_and_method_imports(tmp_path):
    """The walk above finds imports in methods and nested functions, not module-level ones."""
    source = tmp_path / "sample.py"
    source.write_text("import os\nif os:\n    import json\n"
                      "class A:\n    def f(self):\n        def g():\n            import re\n"
                      "        from . import b\n")
    assert _function_imports(str(source)) == [(7, "re"), (8, ".")]


def test_modules_are_loaded_by_name_only_at_the_documented_places():
    found = set()
    for path in _library_files():
        text = open(path, encoding="utf-8").read()
        if re.search(r"\bimport_module\(|__import__\(", text):
            found.add(_relative(path))
    assert found == DYNAMIC_IMPORTS


def test_command_line_builds_and_checks_without_heavy_libraries():
    """Building the parser imports every command interface; none may load torch & co.

    Import-linter cannot see a package ``__init__`` that loads a heavy module when a light
    submodule is imported; this run in a fresh interpreter can.
    """
    code = ("import sys\n"
            "from CalibSegLib.cli import build_parser\n"
            "build_parser()\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_optional_list_is_the_documented_one():
    text = open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8").read()
    section = text.split("### Inside CalibSegLib", 1)[1].split("\n## ", 1)[0]
    for module in OPTIONAL:
        assert f"`{module}`" in section, module


def test_design_document_draws_the_contract_layers():
    """docs/design.md's layer drawing lists the layers of the contract, top to bottom."""
    config = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    contract = config.split('id = "layers"', 1)[1]
    block = contract.split("layers = [", 1)[1].split("]", 1)[0]
    layers = re.findall(r'"([^"]+)"', block)
    text = open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8").read()
    drawing = text.split("### Inside CalibSegLib", 1)[1].split("```", 2)[1]
    rows = [re.split(r"\s{2,}", line.strip())[0] for line in drawing.splitlines()
            if line.strip()]
    expected = [" | ".join(m.strip().removeprefix("CalibSegLib.") for m in layer.split("|"))
                for layer in layers]
    assert rows == expected, "\n".join(rows)


def test_training_config_names_the_loss_binnings():
    """The train command's checks read the loss choices without the calibration package."""
    from CalibSegLib.calibration.modes import Binning
    from CalibSegLib.training.config import CALIBRATION_LOSSES

    assert tuple(CALIBRATION_LOSSES) == tuple(Binning.values())
