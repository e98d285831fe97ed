"""The layout's rules: the shim loads no daemon library (checked in a fresh interpreter); orchestrator
and worker never import each other; core imports only the standard library and yaml; common imports
no wing, the relay neither orchestrator nor worker (read by AST: every import statement, lazy ones
inside functions included, relative ones resolved); no module over 500 lines."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "clusterplex"
MAX_LINES = 500
NOT_IN_THE_SHIM = ("aiohttp", "zeroconf", "psutil", "prometheus_client", "sdnotify", "asyncio")
WINGS = ("orchestrator", "worker", "relay", "cli")


def module_name(path):
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def inside(name, package):
    return name == package or name.startswith(package + ".")


def imports_of(name, source, is_package=False):
    """(line, module) for every import in ``source`` of module ``name``. ``from X import y`` counts as
    X.y where that is a module of the tree, else as X (y is a name defined in X)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{module}" if module else base
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else module


def edges(package):
    """(module, line, imported module) for every module of ``package`` (a dotted name)."""
    for name, path in MODULES.items():
        if inside(name, package):
            for line, target in imports_of(name, path.read_text(), path.name == "__init__.py"):
                yield name, line, target


def report(rule, bad):
    return f"{rule}:\n  " + "\n  ".join(f"{m}:{line} imports {t}" for m, line, t in bad)


def test_the_scanner_sees_every_wing_and_resolves_relative_and_lazy_imports():
    assert {"clusterplex.shim", "clusterplex.core", "clusterplex.common"} | {f"clusterplex.{w}" for w in WINGS} \
        <= set(MODULES)
    src = ("import os.path\nfrom ..core import args, protocol\nfrom . import main\n"
           "def f():\n    from clusterplex.common import link\n    import aiohttp.web\n")
    assert sorted(t for _, t in imports_of("clusterplex.worker.x", src)) == [
        "aiohttp.web", "clusterplex.common.link", "clusterplex.core.args", "clusterplex.core.protocol",
        "clusterplex.worker", "os.path"]
    assert [t for _, t in imports_of("clusterplex.worker", "from .. import __version__", is_package=True)] == [
        "clusterplex"]


def importers(importtime):
    """{module: the module whose import first loaded it}, from ``python -X importtime``'s tree (children
    are printed before their parent, one indent level deeper)."""
    rows = []
    for line in importtime.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|( *)(\S+)$", line)
        if m:
            rows.append((len(m.group(1)), m.group(2)))
    parent = {}
    for i, (depth, name) in enumerate(rows):
        parent[name] = next((n for d, n in rows[i + 1:] if d < depth), None)
    return parent


def daemon_libraries_loaded(modules):
    """'importer imports library' for each daemon library that ``import <modules>`` loads in a fresh
    interpreter (the importer: the nearest clusterplex module above it in the import tree)."""
    r = subprocess.run([sys.executable, "-E", "-X", "importtime", "-c",
                        f"import {modules}, sys; print(sorted(sys.modules))"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = ast.literal_eval(r.stdout.strip())
    parent = importers(r.stderr)
    found = []
    for m in sorted(x for x in loaded if x.split(".")[0] in NOT_IN_THE_SHIM):
        chain = [m]
        while parent.get(chain[-1]) and not chain[-1].startswith("clusterplex"):
            chain.append(parent[chain[-1]])
        found.append(f"{chain[-1]} imports {chain[-2]}" if len(chain) > 1 else f"{m} is loaded")
    return list(dict.fromkeys(found))


def test_the_shim_loads_no_daemon_library():
    """What PMS pays for on every transcode: no event loop, no HTTP server, no mDNS, no metrics."""
    found = daemon_libraries_loaded("clusterplex.shim")
    assert not found, "importing clusterplex.shim loads daemon libraries:\n  " + "\n  ".join(found)


def test_the_shim_check_names_who_imports_a_daemon_library():
    found = daemon_libraries_loaded("clusterplex.shim, clusterplex.common.link")
    assert "clusterplex.common.link imports asyncio" in found


@pytest.mark.parametrize("wing,other", [("orchestrator", "worker"), ("worker", "orchestrator")])
def test_orchestrator_and_worker_never_import_each_other(wing, other):
    bad = [e for e in edges(f"clusterplex.{wing}") if inside(e[2], f"clusterplex.{other}")]
    assert not bad, report(f"clusterplex.{wing} must not import clusterplex.{other}", bad)


def test_core_imports_only_the_standard_library_yaml_and_core():
    def allowed(target):
        top = target.split(".")[0]
        return (top in sys.stdlib_module_names or top == "yaml" or inside(target, "clusterplex.core")
                or target == "clusterplex")      # the root package: __version__, loaded with any module
    bad = [e for e in edges("clusterplex.core") if not allowed(e[2])]
    assert not bad, report("clusterplex.core may import only the standard library, yaml and clusterplex.core", bad)


ORCHESTRATOR_PURE = ("control", "placement", "effects", "jobs", "registry", "scheduler", "feed")


@pytest.mark.parametrize("module", ORCHESTRATOR_PURE)
def test_the_orchestrators_decisions_import_no_io(module):
    """The sans-io core: the standard library without asyncio or sockets, core, and each other."""
    def allowed(target):
        top = target.split(".")[0]
        return ((top in sys.stdlib_module_names and top not in ("asyncio", "socket", "ssl", "subprocess", "http"))
                or inside(target, "clusterplex.core") or target == "clusterplex"
                or any(inside(target, f"clusterplex.orchestrator.{m}") for m in ORCHESTRATOR_PURE))
    name = f"clusterplex.orchestrator.{module}"
    bad = [e for e in edges(name) if not allowed(e[2])]
    assert not bad, report(f"{name} is pure: it may import only the standard library (no I/O), core and "
                           f"the orchestrator's other pure modules", bad)


@pytest.mark.parametrize("package,forbidden", [("common", WINGS), ("relay", ("orchestrator", "worker"))])
def test_common_imports_no_wing_and_the_relay_neither_orchestrator_nor_worker(package, forbidden):
    bad = [e for e in edges(f"clusterplex.{package}") if any(inside(e[2], f"clusterplex.{w}") for w in forbidden)]
    assert not bad, report(f"clusterplex.{package} must not import clusterplex.{{{','.join(forbidden)}}}", bad)


def test_no_module_is_over_500_lines():
    sizes = {p.relative_to(REPO): len(p.read_text().splitlines()) for p in MODULES.values()}
    over = sorted((n, str(p)) for p, n in sizes.items() if n > MAX_LINES)
    assert not over, f"modules over {MAX_LINES} lines (split them):\n  " + "\n  ".join(f"{p}: {n}" for n, p in over)
