"""How Slicer loads the installed module folder, encoded as tests (no Slicer runs here).

Rules (Slicer 5.10/5.12 source):

- ``qSlicerScriptedLoadableModuleFactory::isValidFile`` accepts every ``.py`` file at the
  top of a ``qt-scripted-modules`` folder as a module; ``qSlicerScriptedLoadableModule::
  setPythonSource`` imports it under the file's base name and fails with "class … was not
  found" unless the file defines a class of that name, which it instantiates with the
  module's parent. Sub-folders are not scanned.
- The module's panel exists only if the file has ``<Name>Widget``
  (``setWidgetRepresentationCreationEnabled``); ``ScriptedLoadableModule.runTest`` looks up
  ``<Name>Test``; the module and its panel find their icon and ``.ui`` in ``Resources/``
  beside the file.
- Reload (``slicer.util.reloadScriptedModule``) executes the module file again and nothing
  else; helper packages must be made fresh by the module itself.
- The module folder is put on ``sys.path``; with "Additional module paths" pointing at
  ``<repo>/CalibSeg`` that folder is the source folder, where ``CalibSegLib`` is not.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
from extension_layout import MODULE_DIR, MODULE_NAME, ROOT, build_installed_tree, installed_files

sys.path.insert(0, MODULE_DIR)
from CalibSegSlicer import locations, reloading  # noqa: E402

#: For a module ``Name``: the classes Slicer looks up in ``Name.py`` and the base each needs
#: (None: any class).
REQUIRED_CLASSES = {"": "ScriptedLoadableModule", "Widget": "ScriptedLoadableModuleWidget",
                    "Logic": None, "Test": "ScriptedLoadableModuleTest"}
HELPER_PACKAGES = ("CalibSegSlicer", "CalibSegLib")


@pytest.fixture(scope="module")
def installed() -> dict[str, str]:
    return installed_files()


@pytest.fixture(scope="module")
def installed_tree(tmp_path_factory) -> str:
    """The installed ``qt-scripted-modules`` folder, built by copying what CMake installs."""
    return build_installed_tree(str(tmp_path_factory.mktemp("ext") / "qt-scripted-modules"))


def top_level_modules(paths) -> list[str]:
    return sorted(p for p in paths if "/" not in p and p.endswith(".py"))


def module_name(path: str) -> str:
    """Dotted module name of an installed ``.py`` path."""
    parts = path[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# ------------------------------------------------------------------------ AST resolution
def parse(source: str) -> ast.Module:
    with open(source, encoding="utf-8") as fh:
        return ast.parse(fh.read(), source)


def resolve_class(installed: dict[str, str], path: str, name: str, depth: int = 0):
    """The ``ClassDef`` bound to ``name`` at the top of installed ``path``, following imports."""
    assert depth < 5, f"import chain too long for {name}"
    tree = parse(installed[path])
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node, path
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    target = installed_module_path(installed, node.module)
                    assert target, f"{path} imports {node.module}, which is not installed"
                    return resolve_class(installed, target, alias.name, depth + 1)
    return None, path


def installed_module_path(installed: dict[str, str], dotted: str) -> str | None:
    base = dotted.replace(".", "/")
    for candidate in (base + ".py", base + "/__init__.py"):
        if candidate in installed:
            return candidate
    return None


def base_names(node: ast.ClassDef) -> set[str]:
    return {ast.unparse(b).split(".")[-1] for b in node.bases}


# ------------------------------------------------------------------------------------ tests
def test_one_module_file_at_the_top_of_the_installed_folder(installed):
    assert top_level_modules(installed) == [f"{MODULE_NAME}.py"]


def test_one_module_file_at_the_top_of_the_source_module_folder():
    """Developer install: Slicer scans ``<repo>/CalibSeg`` itself."""
    assert top_level_modules(os.listdir(MODULE_DIR)) == [f"{MODULE_NAME}.py"]


def test_helpers_are_packages_beside_the_module(installed):
    folders = {p.split("/")[0] for p in installed if "/" in p and p.endswith(".py")}
    assert folders == set(HELPER_PACKAGES)
    for package in HELPER_PACKAGES:
        assert f"{package}/__init__.py" in installed


@pytest.mark.parametrize("suffix", list(REQUIRED_CLASSES))
def test_module_file_defines_the_classes_slicer_looks_for(installed, suffix):
    for path in top_level_modules(installed):
        name = path[:-3] + suffix
        node, where = resolve_class(installed, path, name)
        assert node is not None, f"class {name} was not found in {path}"
        if suffix == "":
            assert where == path, "the module class must be defined in the module file"
        required_base = REQUIRED_CLASSES[suffix]
        if required_base:
            assert required_base in base_names(node), f"{name} ({where}) must derive from " \
                                                      f"{required_base}"


def test_module_finds_its_icon_and_panel_in_resources(installed):
    assert f"Resources/Icons/{MODULE_NAME}.png" in installed
    assert f"Resources/UI/{MODULE_NAME}.ui" in installed


def test_every_helper_the_installed_module_imports_is_installed(installed):
    """Each ``CalibSegSlicer`` / ``CalibSegLib`` import in an installed file resolves there."""
    missing = []
    for path in (p for p in installed if p.endswith(".py")):
        for node in ast.walk(parse(installed[path])):
            if isinstance(node, ast.Import):
                wanted = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                wanted = [(node.module, a.name) for a in node.names]
            else:
                continue
            for module, name in wanted:
                if module.split(".")[0] not in HELPER_PACKAGES:
                    continue
                target = installed_module_path(installed, module)
                if target is None:
                    missing.append(f"{path}: {module}")
                elif name and not (installed_module_path(installed, f"{module}.{name}")
                                   or name in bound_names(installed[target])):
                    missing.append(f"{path}: {module}.{name}")
    assert not missing, "imported but not installed:\n" + "\n".join(sorted(set(missing)))


def bound_names(source: str) -> set[str]:
    """Names a file binds anywhere (definitions, assignments, imports)."""
    names = set()
    tree = parse(source)
    if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
        # A lazy module (PEP 562): the names it serves are string constants in it.
        names |= {n.value for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


# ------------------------------------------------------------------------------- reloading
def test_reload_forgets_every_helper_module(installed):
    helper_modules = {module_name(p) for p in installed
                      if p.endswith(".py") and p.split("/")[0] in HELPER_PACKAGES}
    others = {"CalibSeg", "CalibSegLibrary", "CalibSegSlicerExtras", "numpy", "slicer"}
    modules = {n: types.ModuleType(n) for n in helper_modules | others}
    assert reloading.isReload(modules)
    forgotten = reloading.forgetHelperModules(modules)
    assert set(forgotten) == helper_modules
    assert set(modules) == others
    assert {"CalibSegSlicer.widget", "CalibSegSlicer.logic", "CalibSegLib.errors"} <= \
        helper_modules


def test_first_load_is_not_a_reload():
    first = {n: types.ModuleType(n) for n in ("CalibSegSlicer", "CalibSegSlicer.reloading",
                                              "CalibSegLib", "CalibSegLib.errors")}
    assert not reloading.isReload(first)


def test_module_file_prepares_imports_before_any_other_helper_import():
    tree = parse(os.path.join(MODULE_DIR, f"{MODULE_NAME}.py"))
    statements = [n for n in tree.body if not (isinstance(n, ast.Expr)
                                                and isinstance(n.value, ast.Constant))]
    prepare = next(i for i, n in enumerate(statements) if isinstance(n, ast.Expr)
                   and ast.unparse(n.value) == "prepareHelperImports()")
    for node in statements[:prepare]:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            assert node.module == "CalibSegSlicer.reloading", ast.unparse(node)
        else:
            assert isinstance(node, ast.ImportFrom), ast.unparse(node)
    later = [n for n in statements[prepare + 1:] if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert any(isinstance(n, ast.ImportFrom) and n.module.startswith("CalibSegSlicer.")
               for n in later)


IMPORT_SCRIPT = textwrap.dedent("""
    import importlib.util, json, os, sys
    module_dir = sys.argv[1]
    # Only what Slicer offers: the module folder on sys.path, no installed CalibSegLib.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path[:] = [p for p in sys.path if p and "__editable__" not in p
                   and not os.path.isfile(os.path.join(p, "CalibSegLib", "__init__.py"))]
    sys.path.insert(0, module_dir)
    sys.path_importer_cache.clear()
    before = importlib.util.find_spec("CalibSegLib") is not None
    from CalibSegSlicer.reloading import prepareHelperImports
    first = prepareHelperImports()
    import CalibSegLib.errors, CalibSegSlicer.locations
    old = (CalibSegLib.errors, CalibSegSlicer.locations)
    second = prepareHelperImports()          # what CalibSeg.py does on Reload
    import CalibSegLib.errors, CalibSegSlicer.locations
    new = (CalibSegLib.errors, CalibSegSlicer.locations)
    print(json.dumps({"before": before, "first": first, "second": second,
                      "fresh": [a is not b for a, b in zip(old, new)],
                      "lib": os.path.dirname(os.path.dirname(CalibSegLib.errors.__file__))}))
""")


@pytest.mark.parametrize("layout", ["source", "installed"])
def test_library_importable_and_reloaded_in_both_layouts(layout, installed_tree, tmp_path):
    module_dir = MODULE_DIR if layout == "source" else installed_tree
    out = subprocess.run([sys.executable, "-c", IMPORT_SCRIPT, module_dir], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"] is (layout == "installed")
    assert result["first"] == []
    assert "CalibSegLib.errors" in result["second"]
    assert "CalibSegSlicer.locations" in result["second"]
    assert result["fresh"] == [True, True]
    expected = ROOT if layout == "source" else installed_tree
    assert os.path.samefile(result["lib"], expected)


# -------------------------------------------------------------------- installed resources
def test_installed_tree_has_every_file_cmake_installs(installed, installed_tree):
    on_disk = {os.path.relpath(os.path.join(b, n), installed_tree).replace(os.sep, "/")
               for b, _, names in os.walk(installed_tree) for n in names}
    assert on_disk == set(installed)


@pytest.mark.parametrize("layout", ["source", "installed"])
def test_shipped_models_and_sample_are_found(layout, installed_tree):
    base = None if layout == "source" else installed_tree
    folders = locations.shippedModelFolders(base)
    assert [os.path.basename(f) for f in folders] == ["dicece", "dicece-hardace",
                                                      "dicece-softace"]
    root = ROOT if base is None else installed_tree
    for folder in folders:
        assert os.path.commonpath([folder, root]) == os.path.abspath(root)
        with open(os.path.join(folder, "model.json"), encoding="utf-8") as fh:
            card = json.load(fh)
        assert card  # a readable card
        assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    for path in (locations.sampleDataPath(base), locations.sampleLabelsPath(base)):
        assert os.path.commonpath([path, root]) == os.path.abspath(root)
    from CalibSegSlicer import installer

    requirements = installer.requirementsPath(base)
    assert os.path.commonpath([requirements, root]) == os.path.abspath(root)


def test_shipped_models_load_with_the_library(installed_tree):
    """The installed copies are complete models (card, weights, gallery) for CalibSegLib."""
    from CalibSegLib.models import load_model

    for folder in locations.shippedModelFolders(installed_tree):
        model = load_model(folder)
        assert model is not None


def test_missing_model_folder_gives_an_empty_list(tmp_path):
    (tmp_path / "mod").mkdir()
    assert locations.shippedModelFolders(str(tmp_path / "mod")) == []
    with pytest.raises(FileNotFoundError, match="reinstall"):
        locations.sampleDataPath(str(tmp_path / "mod"))


# ------------------------------------------------- loading CalibSeg.py the way Slicer does
LOAD_SCRIPT = textwrap.dedent('''
    import importlib.util, json, os, sys, types
    module_dir = sys.argv[1]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path[:] = [p for p in sys.path if p and "__editable__" not in p
                   and not os.path.isfile(os.path.join(p, "CalibSegLib", "__init__.py"))]
    sys.path.insert(0, module_dir)   # Slicer appends the module folder to sys.path
    sys.path_importer_cache.clear()

    # Stand-ins for what only the Slicer application provides (slicer-core gives MRML).
    import slicer
    class Anything:
        def __init__(self, *a, **k): pass
        def __call__(self, *a, **k): return Anything()
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Anything()
    class QtModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Anything
    for name in ("qt", "ctk", "slicer.qSlicerWidgetsPythonQt"):
        sys.modules[name] = QtModule(name)
    connections = []
    slicer.app = types.SimpleNamespace(connect=lambda s, f: connections.append((s, f)))
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = type(self).__name__
    class ScriptedLoadableModuleWidget: pass
    class ScriptedLoadableModuleLogic: pass
    class ScriptedLoadableModuleTest: pass
    for c in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
              ScriptedLoadableModuleTest):
        setattr(base, c.__name__, c)
    sys.modules[base.__name__] = slicer.ScriptedLoadableModule = base
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = wrapper.WithinRange = lambda *a, **k: None
    sys.modules[wrapper.__name__] = slicer.parameterNodeWrapper = wrapper
    registered = []
    sample = types.ModuleType("SampleData")
    sample.SampleDataLogic = types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kw: registered.append(kw))
    sys.modules["SampleData"] = sample

    def load():   # qSlicerScriptedLoadableModule::setPythonSource / reloadScriptedModule
        path = os.path.join(module_dir, "CalibSeg.py")
        spec = importlib.util.spec_from_file_location("CalibSeg", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["CalibSeg"] = module
        spec.loader.exec_module(module)
        return module

    first = load()
    parent = types.SimpleNamespace(path=os.path.join(module_dir, "CalibSeg.py"))
    instance = first.CalibSeg(parent)
    names = {n: isinstance(getattr(first, n, None), type)
             for n in ("CalibSeg", "CalibSegWidget", "CalibSegLogic", "CalibSegTest")}
    (signal, slot), = connections
    slot()  # startupCompleted()
    widget_before = first.CalibSegWidget
    second = load()   # "Reload"
    print(json.dumps({"classes": names, "title": parent.title, "signal": signal,
                      "registered": [r["sampleName"] for r in registered],
                      "uris": [u for r in registered for u in r["uris"]],
                      "freshWidget": second.CalibSegWidget is not widget_before,
                      "lib": os.path.dirname(os.path.dirname(
                          sys.modules["CalibSegLib"].__file__))}))
''')


@pytest.mark.parametrize("layout", ["source", "installed"])
def test_module_file_loads_like_slicer_loads_it(layout, installed_tree, tmp_path):
    """Import ``CalibSeg.py`` as Slicer does (stand-ins for Qt and the application), create
    the module, fire ``startupCompleted()``, then Reload."""
    module_dir = MODULE_DIR if layout == "source" else installed_tree
    out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, module_dir], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["classes"] == {"CalibSeg": True, "CalibSegWidget": True,
                                 "CalibSegLogic": True, "CalibSegTest": True}
    assert result["title"] == "CalibSeg"
    assert result["signal"] == "startupCompleted()"
    assert result["registered"] == ["CalibSeg-MNI-T1-2mm"]
    root = ROOT if layout == "source" else installed_tree
    for uri in result["uris"]:
        assert os.path.abspath(root) in uri or os.path.realpath(root) in uri
    assert result["freshWidget"] is True
    assert os.path.samefile(result["lib"], root)
