"""The layering rules, checked rather than written down.

- The engine never imports the TUI: nothing under ``appliance/`` imports ``tui`` or ``textual``,
  except the ``appliance tui`` command itself, which opens the front door lazily.
- The installer core never imports torch or onnxruntime: only ``appliance/workloads/`` (what runs
  inside the stack) may name them, and importing every core module, the CLI included, loads
  neither (nor the TUI, nor the workloads' heavy dependencies).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "appliance"
HEAVY = ("torch", "onnxruntime", "onnx", "tensorflow")
FRONT_END = ("tui", "textual")
TUI_DOOR = PACKAGE / "cli" / "tui_cmd.py"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in a file, wherever it stands."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _core_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "workloads" not in p.relative_to(PACKAGE).parts]


def test_the_engine_never_imports_the_tui() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in PACKAGE.rglob("*.py")
        if path != TUI_DOOR
        for line, name in _imports(path)
        if name in FRONT_END
    ]
    assert not offenders, "the engine must not import the TUI:\n" + "\n".join(offenders)


def test_the_installer_core_never_names_torch_or_onnxruntime() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _core_modules()
        for line, name in _imports(path)
        if name in HEAVY
    ]
    assert not offenders, "only appliance/workloads may import ML runtimes:\n" + "\n".join(offenders)


def test_importing_the_whole_core_loads_no_ml_runtime_and_no_tui() -> None:
    """Import every core module in a fresh interpreter and look at what came along with them
    (an import of a workload module at the top of a core module would drag onnxruntime in)."""
    names = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in _core_modules()
    )
    probe = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY + FRONT_END)!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(names) > 50, names  # the probe really imported the core, not an empty list
    assert loaded == [], f"importing the installer core loaded {loaded}"


def test_the_scanner_sees_lazy_and_dotted_imports(tmp_path: Path) -> None:
    """The rules above can fail: imports inside functions, dotted and from-imports are all seen."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\ndef f():\n    from torch import nn\n    import onnxruntime.capi as c\n")
    assert _imports(sample) == [(1, "os"), (3, "torch"), (4, "onnxruntime")]
