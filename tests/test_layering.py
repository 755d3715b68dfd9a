"""The import contract: vfnet's stages form a one-way chain, and SimpleITK stays in the IO stage.

:data:`STAGES` is the single source of truth for the chain (README "Layout of the code"
describes it). A module may import modules of its own stage or of a lower one; an import
of a higher stage, at any depth (inside functions too), fails this test naming the
module, the line and what it imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vfnet"

# Lowest first. Each entry: stage name, the modules (dotted prefixes) that belong to it.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("vfnet", "vfnet.errors", "vfnet.atomic", "vfnet.views", "vfnet.paths", "vfnet.resolution",
              "vfnet.device", "vfnet.windows", "vfnet.checkpoint", "vfnet.zipsafe")),
    ("io", ("vfnet.imageio", "vfnet.dicom", "vfnet.dataset", "vfnet.integrity", "vfnet.demo_data")),
    # the measures (Dice, HD95, paired tests): held-out prediction scores with them, so they sit low
    ("measures", ("vfnet.measures",)),
    ("experiment_planning", ("vfnet.experiment_planning",)),
    ("preprocessing", ("vfnet.preprocessing",)),
    ("networks", ("vfnet.networks",)),
    ("training", ("vfnet.training",)),
    ("inference", ("vfnet.inference",)),
    ("fusion", ("vfnet.fusion",)),
    # scoring label folders, cross-validation of every method and the choice of the best one
    ("evaluation", ("vfnet.evaluation",)),
    ("prediction", ("vfnet.prediction",)),
    ("reporting and deployment", ("vfnet.reporting", "vfnet.deployment")),
    ("pipeline", ("vfnet.pipeline", "vfnet.demo")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage_of(module: str) -> int | None:
    """Index in :data:`STAGES` of the longest matching prefix; None for modules outside vfnet."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "vfnet" and module.startswith(prefix + "."))
            if inside and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def imported_modules(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every vfnet import in ``path`` (the module ``module``), at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (module or module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            # ``from vfnet import paths`` imports the module vfnet.paths
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names
                    if (PACKAGE.parent / f"{module}.{alias.name}".replace(".", "/")).with_suffix(".py").is_file()]
    return [(line, m) for line, m in out if m == "vfnet" or m.startswith("vfnet.")]


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_stage():
    missing = [module_name(p) for p in modules() if stage_of(module_name(p)) is None]
    assert not missing, f"modules without a stage in tests/test_layering.py STAGES: {missing}"


def test_every_folder_is_a_package():
    # setuptools' packages.find skips folders without __init__.py: an install would miss them
    folders = {p.parent for p in modules()}
    assert not [str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()]


def test_no_stage_imports_a_higher_one():
    violations = []
    for path in modules():
        own = stage_of(module_name(path))
        for line, target in imported_modules(path):
            other = stage_of(target)
            if other is not None and own is not None and other > own:
                violations.append(f"{path.relative_to(ROOT)}:{line} ({STAGES[own][0]}) imports {target} "
                                  f"({STAGES[other][0]})")
    assert not violations, "imports against the stage chain:\n" + "\n".join(violations)


def test_the_checker_sees_nested_relative_and_module_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("import numpy\nfrom vfnet import paths\n\n\ndef f():\n"
                      "    from vfnet.pipeline.jobs import train_all\n    from ..fusion import roi\n")
    found = imported_modules(source, "vfnet.training.probe")
    assert {(2, "vfnet.paths"), (6, "vfnet.pipeline.jobs"), (7, "vfnet.fusion")} <= set(found)
    assert all(not m.startswith("numpy") for _, m in found)


@pytest.mark.parametrize("modules", [
    "vfnet.training, vfnet.networks, vfnet.training.train2d, vfnet.training.train3d, vfnet.training.train_vfn",
    ("vfnet.inference.predict2d, vfnet.inference.predict3d, vfnet.inference.sliding_window, "
     "vfnet.preprocessing.data, vfnet.experiment_planning.plans"),
])
def test_simpleitk_stays_in_the_io_stage(modules):
    code = f"import sys; import {modules}; assert 'SimpleITK' not in sys.modules, 'SimpleITK was imported'"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
