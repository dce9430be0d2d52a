"""CalibSegLib's types and docstrings: mypy reports no errors, public functions state shapes.

The type check runs mypy with the ``[tool.mypy]`` table of ``pyproject.toml`` (files,
strictness, third-party overrides), exactly as ``.venv/bin/mypy`` does from the
repository root. The docstring check reads the sources with :mod:`ast` (nothing is
imported): every public function and method of a public module has a docstring, and
one that takes or returns an array states its shape in the scikit-learn style,
"array of shape (C, Z, Y, X)" or "``(Z, Y, X)``".
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "CalibSegLib"

#: Annotation fragments that mark a parameter or return value as an array.
ARRAY_ANNOTATIONS = ("np.ndarray", "numpy.ndarray", "NDArray", "torch.Tensor", "ArrayLike")

_TOKEN = r"(?:\*?[A-Za-z_][A-Za-z0-9_]*|\d+|\.\.\.)(?:\s*[-+*/]\s*(?:[A-Za-z_][A-Za-z0-9_]*|\d+))?"
_SHAPE = rf"\(\s*(?:{_TOKEN}\s*,\s*)*(?:{_TOKEN}\s*,?\s*)?\)"
#: "shape (C, Z, Y, X)", "shape ``(N,)``" or "``(Z, Y, X)``".
SHAPE_PATTERN = re.compile(rf"shape\s+(?:``)?{_SHAPE}|``{_SHAPE}``")


def test_mypy_reports_no_errors():
    pytest.importorskip("mypy", reason="mypy is part of the test extras")
    # A separate process: mypy changes interpreter-wide settings (recursion limit). The
    # [tool.mypy] table names the files relative to the repository root.
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file",
                           str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0 and "Success: no issues found" in done.stdout, (
        f"mypy found problems in CalibSegLib (exit {done.returncode}):\n"
        f"{done.stdout}{done.stderr}"
    )


def _public_modules() -> list[Path]:
    return sorted(p for p in LIBRARY.rglob("*.py")
                  if not any(part.startswith("_")
                             for part in p.relative_to(LIBRARY).with_suffix("").parts))


def _public_functions(tree: ast.Module):
    """``(qualified name, node)`` of module functions and methods of public classes."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f"{node.name}.{item.name}", item


def _is_overload(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(ast.unparse(d).split(".")[-1] == "overload" for d in node.decorator_list)


def _takes_or_returns_arrays(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    args = node.args
    annotations = [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs,
                                          args.vararg, args.kwarg) if a is not None]
    annotations.append(node.returns)
    text = " ".join(ast.unparse(a) for a in annotations if a is not None)
    return any(fragment in text for fragment in ARRAY_ANNOTATIONS)


def _docstring_problems() -> list[str]:
    problems = []
    for path in _public_modules():
        relative = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
        for name, node in _public_functions(tree):
            if name.split(".")[-1].startswith("_") or _is_overload(node):
                continue
            where = f"{relative}:{node.lineno} {name}"
            doc = ast.get_docstring(node)
            if not doc:
                problems.append(f"{where}: no docstring")
            elif _takes_or_returns_arrays(node) and not SHAPE_PATTERN.search(doc):
                problems.append(f"{where}: takes or returns arrays but states no shape")
    return problems


def test_shape_pattern_accepts_the_documented_styles():
    for text in ("probabilities, array of shape (C, Z, Y, X)", "labels ``(Z, Y, X)``",
                 "sums of shape (G,)", "edges of shape ``(n_bins + 1,)``", "a tensor of shape ()",
                 "logits, tensor of shape (N, C, *spatial)"):
        assert SHAPE_PATTERN.search(text), text
    for text in ("the mean (over all cases)", "(Dice, CE) pairs", "shape of the volume"):
        assert not SHAPE_PATTERN.search(text), text


def test_public_functions_have_docstrings_with_array_shapes():
    problems = _docstring_problems()
    assert not problems, (
        f"{len(problems)} public function(s) of CalibSegLib lack a docstring or, taking or "
        "returning arrays, a shape such as 'array of shape (C, Z, Y, X)':\n" + "\n".join(problems)
    )
