"""The package's shape: no import cycles (lazy imports inside functions count too), result types
that load without the engine, and a library call that leaves the process as it found it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fkpbatch

from conftest import REPO

PACKAGE = Path(fkpbatch.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the fkpbatch modules it imports anywhere in its body (top level or in functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    # the package's __init__ re-exports the API lazily; it is the root, not a participant
    graph = {name: targets - {"fkpbatch"} for name, targets in import_graph().items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["fkpbatch.results", "fkpbatch.options", "fkpbatch.writers"])
def test_result_and_option_modules_import_without_the_engine(module):
    """No import cycle: the result types and the writers load without the engine (or torch for the
    first two). The package's __init__ is bypassed so only the module's own imports count."""
    code = (
        "import sys, types, pathlib, importlib\n"
        f"package = types.ModuleType('fkpbatch'); package.__path__ = [{str(REPO / 'fkpbatch')!r}]\n"
        "sys.modules['fkpbatch'] = package\n"
        f"importlib.import_module({module!r})\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('fkpbatch.', 'torch')))))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "fkpbatch.engine" not in loaded
    if module != "fkpbatch.writers":
        assert "fkpbatch.writers" not in loaded and "torch" not in loaded


PROCESS_STATE = r"""
import os, signal, sys, warnings
import torch
from PIL import Image, ImageFile

def state():
    return {
        "threads": torch.get_num_threads(),
        "signals": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)},
        "umask": open("/proc/self/status").read().split("Umask:")[1].split()[0],
        "fds": sorted(os.listdir("/proc/self/fd")),
        "env": dict(os.environ),
        "pillow": (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES),
        "warnings": list(warnings.filters),
    }

def handler(signum, frame):
    pass

torch.set_num_threads(1)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, handler)
os.umask(0o027)
Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = 1234567, True
before = state()
import fkpbatch
for workers in (0, 1):
    frame = fkpbatch.predict(sys.argv[1], workers=workers, pose=True)
    assert len(frame) >= 4, frame
after = state()
changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
print(changed or "unchanged")
"""


def test_a_library_call_leaves_the_process_as_it_found_it(tmp_path):
    """fkpbatch.predict (workers or not, ONNX export included) leaves signal handlers, umask, file
    descriptors, torch threads, Pillow flags, warning filters and the environment as they were."""
    examples = PACKAGE.parent / "examples"
    run = subprocess.run(
        [sys.executable, "-c", PROCESS_STATE, str(examples)], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "unchanged", run.stdout
