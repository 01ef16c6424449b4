"""The import direction of the one ``fedge`` namespace: wire and transport below everything and free of torch, the
agent and the coordinator beside each other, the command-line shell on top, and no import circle anywhere."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fedge"
SIDES = ("fedge.coordinator", "fedge.edge_agent")
SHELL = "fedge.shell"
NETWORK = ("fedge.wire", "fedge.transport", "fedge.inbox", "fedge.trust", "fedge.heartbeat", "fedge.broker")
TENSOR_LIBRARIES = {"torch", "transformers", "peft", "bitsandbytes"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, wherever the import stands (functions and TYPE_CHECKING blocks included)."""
    found = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def _within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _internal(imports: set[str]) -> set[str]:
    """The fedge modules among ``imports`` (``from pkg import name`` counts only where name is a module)."""
    return {name for name in imports if name in MODULES}


def test_only_fedge_is_installed():
    assert not any((PACKAGE.parent / name / "__init__.py").exists() for name in ("coordinator", "edge_agent", "profiles", "quantization"))
    assert {"fedge.coordinator", "fedge.edge_agent", "fedge.profiles", "fedge.quantization", "fedge.shell"} <= set(MODULES)


def test_the_wheel_installs_only_fedge(tmp_path):
    """Built from a copy of the sources: the wheel's top level is ``fedge`` and its metadata, nothing else (PyPI has
    packages named coordinator, quantization and edge-agent)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PACKAGE.parent / name, source / name)
    shutil.copytree(PACKAGE, source / "fedge", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("fedge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"fedge", wheel.name.split("-py")[0] + ".dist-info"}
    assert "fedge/profiles/catalogue.yaml" in names and "fedge/profiles/calibration/cpu.json" in names


@pytest.mark.parametrize("module", sorted(name for name in MODULES if not _within(name, SHELL)))
def test_nothing_imports_the_shell(module):
    assert not {name for name in _internal(MODULES[module]) if _within(name, SHELL)}


@pytest.mark.parametrize("module", sorted(name for name in MODULES if not _within(name, (SHELL, *SIDES))))
def test_the_kernel_imports_neither_agent_nor_coordinator(module):
    assert not {name for name in _internal(MODULES[module]) if _within(name, SIDES)}


@pytest.mark.parametrize("side,other", [SIDES, SIDES[::-1]])
def test_agent_and_coordinator_do_not_import_each_other(side, other):
    crossing = {(module, name) for module, imports in MODULES.items() if _within(module, side) for name in _internal(imports) if _within(name, other)}
    assert not crossing


def _reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for name in _internal(MODULES[todo.pop()]):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


@pytest.mark.parametrize("module", sorted(name for name in MODULES if _within(name, NETWORK)))
def test_wire_and_transport_know_nothing_of_torch(module):
    closure = _reachable(module) | {module}
    assert not {name for name in closure if _within(name, ("fedge.coordinator", "fedge.edge_agent", SHELL, "fedge.strategies", "fedge.task"))}
    tensor_imports = {(name, imported) for name in closure for imported in MODULES[name] if imported.split(".")[0] in TENSOR_LIBRARIES}
    assert not tensor_imports


def test_no_module_is_over_400_lines():
    long = {module: lines for module, lines in ((path, len(path.read_text().splitlines())) for path in PACKAGE.rglob("*.py")) if lines > 400}
    assert not long, long


def test_no_import_circle():
    circles = sorted(module for module in MODULES if module in _reachable(module) and not module.endswith("__init__") and module not in _packages_reexporting(module))
    assert not circles, f"modules that import themselves through others: {circles}"


def _packages_reexporting(module: str) -> set[str]:
    """A package's ``__init__`` importing its own submodules is not a circle (``pkg`` → ``pkg.sub`` → ``pkg``)."""
    return {module} if any(name.startswith(module + ".") for name in MODULES) else set()
