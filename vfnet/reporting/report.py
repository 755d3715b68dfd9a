"""vfnet_report: Figure-2-style panels of chosen held-out cases, every unit's training curves, one index.md.

The cases come from the test folds of cross-validation: each case is drawn with the maps of
the 2D units that did not train on it and the VFN of its fold, exactly what ``vfnet_crossval``
scored. By default the cases where the VFN gains most and loses most against majority voting
(read from ``crossval.json``) are shown.

Example:
    >>> folder = make_report("Task04", preset="quick", num_cases=2)
    >>> (folder / "index.md").is_file()
    True
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vfnet import __version__, paths
from vfnet.atomic import atomic_path, read_json
from vfnet.checkpoint import load_checkpoint
from vfnet.errors import CheckpointError, VfnetError
from vfnet.evaluation.crossval import test_folds
from vfnet.experiment_planning.plans import NETWORKS_2D, Plan
from vfnet.fusion.methods import VfnConfig, class_argmax, fuse, majority_vote
from vfnet.fusion.models import load_vfn
from vfnet.measures.metrics import dice
from vfnet.paths import FINAL_CHECKPOINT, LATEST_CHECKPOINT
from vfnet.prediction.models import _train_hint
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.reporting.figures import CaseRow, draw_case_rows
from vfnet.views import VIEWS

REPORT_DIR = "report"
CURVES_DIR = "curves"
CURVE_NETWORKS = (*NETWORKS_2D, paths.VFN_NETWORK, paths.VFN_NOIMAGE_NETWORK, paths.UNET3D_NETWORK)


def choose_cases(crossval: dict | None, num_cases: int, available: Sequence[str]) -> list[tuple[str, str]]:
    """Pick ``num_cases`` cases: largest VFN gain over majority, largest loss, next gain, next loss...

    Args:
        crossval: contents of crossval.json, or None.
        num_cases: how many cases.
        available: held-out cases whose maps exist; only these are picked.

    Returns:
        (case id, why it was chosen) pairs. Without a VFN in crossval.json the best and
        worst majority-vote cases are taken; without crossval.json the first available cases.
    """
    entries = {c: e for c, e in (crossval or {}).get("cases", {}).items() if c in set(available)}

    def overall(case: str, method: str) -> float | None:
        value = entries[case]["dice"].get(method, {}).get("overall")
        return None if value is None or not np.isfinite(value) else float(value)

    scored = {c: (overall(c, "vfn"), overall(c, "majority")) for c in entries}
    gains = {c: v - m for c, (v, m) in scored.items() if v is not None and m is not None}
    if gains:
        ranking = sorted(gains, key=lambda c: (-gains[c], c))

        def describe(case: str, top: bool) -> str:
            points = f"{100 * gains[case]:+.1f} Dice points"
            position = ranking.index(case)
            if position not in (0, len(ranking) - 1):
                return f"VFN gain over majority ranks {position + 1} of {len(ranking)} ({points})"
            if top:
                return f"VFN gains most over majority ({points})"
            if gains[case] < 0:
                return f"VFN loses most against majority ({points})"
            return f"VFN gains least over majority ({points})"
    else:
        majority = {c: m for c, (_, m) in scored.items() if m is not None}
        ranking = sorted(majority, key=lambda c: (-majority[c], c))

        def describe(case: str, top: bool) -> str:
            return f"{'best' if top else 'worst'} majority Dice ({100 * majority[case]:.1f}%)"
    if not ranking:
        reason = "held-out case" + ("" if crossval else " (run vfnet_crossval to pick by VFN gain)")
        return [(case, reason) for case in sorted(available)[:num_cases]]
    picks: list[tuple[str, str]] = []
    head, tail = 0, len(ranking) - 1
    while len(picks) < min(num_cases, len(ranking)):
        top = len(picks) % 2 == 0
        case = ranking[head] if top else ranking[tail]
        head, tail = (head + 1, tail) if top else (head, tail - 1)
        picks.append((case, describe(case, top)))
    return picks


def _overall_dice(reference: np.ndarray, prediction: np.ndarray, num_classes: int) -> float:
    return float(np.mean([dice(reference == c, prediction == c) for c in range(1, num_classes)]))


def _fold_units(plan: Plan) -> dict[str, tuple[str, str]]:
    """Test fold → (2D unit whose maps score it, VFN unit that fuses it)."""
    return {fold: (unit, vfn_unit) for fold, unit, vfn_unit in test_folds(plan)}


def _view_maps(results: Path, preset: str, unit: str, case: str) -> dict[str, np.ndarray]:
    """The held-out maps of ``case`` that exist, per view (a missing view is simply absent)."""
    maps = {}
    for view in VIEWS:
        path = paths.UnitPaths.of(results, preset, paths.view_network(view), unit).prediction(case)
        if path.is_file():
            with np.load(path) as archive:
                maps[view] = archive["probabilities"].astype(np.float32)
    return maps


class _CaseDrawer:
    """Loads each fold's VFNs once and turns a case into a :class:`CaseRow`."""

    def __init__(self, results: Path, preset: str, plan: Plan, data: PreprocessedDataset):
        self.results, self.preset, self.plan, self.data = results, preset, plan, data
        self.units = _fold_units(plan)
        self.config = VfnConfig.from_plan(plan, device="cpu")
        self._vfns: dict[tuple[str, str], torch.nn.Module | None] = {}

    def vfn(self, method: str, vfn_unit: str) -> torch.nn.Module | None:
        key = (method, vfn_unit)
        if key not in self._vfns:
            unit = paths.UnitPaths.of(self.results, self.preset, paths.VFN_METHOD_NETWORKS[method], vfn_unit)
            exists = unit.final_checkpoint.is_file()
            self._vfns[key] = load_vfn(unit.folder, self.plan, method == "vfn", "cpu") if exists else None
        return self._vfns[key]

    def held_out_cases(self) -> list[str]:
        """Cases of the test folds with at least one view's held-out maps."""
        out = []
        for fold, (unit, _) in self.units.items():
            for case in self.data.fold_cases([fold]):
                if _view_maps_exist(self.results, self.preset, unit, case):
                    out.append(case)
        return sorted(out)

    def row(self, case: str, why: str) -> CaseRow:
        fold = self.data.fold_of(case)
        unit, vfn_unit = self.units[fold]
        maps = _view_maps(self.results, self.preset, unit, case)
        image, label = self.data.load(case, mmap=False)
        predictions = {view: class_argmax(p) for view, p in maps.items()}
        if len(maps) == len(VIEWS):
            predictions["majority"] = majority_vote(maps)
            for method in paths.VFN_METHOD_NETWORKS:
                model = self.vfn(method, vfn_unit)
                if model is not None:
                    predictions[method] = fuse(method, maps, image, model=model, vfn_config=self.config)
        scores = {name: _overall_dice(label, labels, self.plan.num_classes) for name, labels in predictions.items()}
        return CaseRow(case, image, label, predictions, scores, note=f"fold {fold}: {why}")


def _view_maps_exist(results: Path, preset: str, unit: str, case: str) -> bool:
    return any(paths.UnitPaths.of(results, preset, paths.view_network(v), unit).prediction(case).is_file()
               for v in VIEWS)


def _unit_order(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _checkpoint_history(path: Path) -> list[dict] | None:
    try:
        state = load_checkpoint(path)
    except CheckpointError:  # an unreadable checkpoint only costs its curve
        return None
    return list(state["history"]) if isinstance(state, dict) and state.get("history") else None


def _history_of(unit_dir: Path) -> list[dict] | None:
    for name in (LATEST_CHECKPOINT, FINAL_CHECKPOINT):
        history = _checkpoint_history(unit_dir / name) if (unit_dir / name).is_file() else None
        if history:
            return history
    return None


def collect_curves(preset_dir: Path, out_dir: Path) -> list[dict]:
    """Copy every unit's progress.png into ``out_dir`` (re-plot from a checkpoint's history if absent).

    Returns:
        One dict per unit folder: network, unit, and ``file`` (name in ``out_dir``) or None.
    """
    curves = []
    for network in CURVE_NETWORKS:
        folder = preset_dir / network
        if not folder.is_dir():
            continue
        for unit_dir in sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: _unit_order(p.name)):
            target = out_dir / f"{network}__{unit_dir.name}.png"
            source = unit_dir / "progress.png"
            if source.is_file():
                out_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            elif (history := _history_of(unit_dir)) is not None:
                from vfnet.training.trainer import plot_progress  # only needed for units without a PNG

                out_dir.mkdir(parents=True, exist_ok=True)
                plot_progress(history, target)
            else:
                target = None
            curves.append({"network": network, "unit": unit_dir.name, "file": target.name if target else None})
    return curves


def _dice_cell(row: CaseRow, panel: str) -> str:
    value = row.dice.get(panel)
    return "–" if value is None else f"{100 * value:.2f}"


def write_index(out_dir: Path, title: str, notes: list[str], figure: Path | None, rows: Sequence[CaseRow],
                panels: Sequence[str], crossval_md: Path | None, curves: list[dict]) -> Path:
    """Write ``index.md``: notes, the case figure with a Dice table, the crossval table, the curves."""
    lines = [f"# {title}", "", f"Written by vfnet {__version__} on {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    lines += [f"> {note}" for note in notes] + ([""] if notes else [])
    lines += ["## Cases", ""]
    if figure is not None:
        lines += [("Each row: the image slice through the middle of the organ, the ground truth, then each method's "
                   "labels (the ground truth outlined in white). Dice over the whole volume, mean over labels."), "",
                  f"![cases]({figure.name})", "",
                  "| case | why | " + " | ".join(panels) + " |", "|---" * (len(panels) + 2) + "|"]
        lines += [f"| {r.case} | {r.note} | " + " | ".join(_dice_cell(r, p) for p in panels) + " |" for r in rows]
    else:
        lines.append("No case figure (see the notes above).")
    lines += ["", "## Cross-validation", ""]
    if crossval_md is not None:
        # demote the table's own headings below this page's
        lines += [("##" + line) if line.startswith("#") else line for line in crossval_md.read_text(encoding="utf-8").splitlines()]
    else:
        lines.append("No crossval.md yet: run `vfnet_crossval` for the table of every fusion method.")
    lines += ["", "## Training curves", ""]
    if not curves:
        lines.append("No trained units found.")
    for curve in curves:
        head = f"### {curve['network']} / {curve['unit']}"
        body = f"![{curve['network']} {curve['unit']}]({CURVES_DIR}/{curve['file']})" if curve["file"] else \
            "no progress.png and no history in its checkpoints"
        lines += [head, "", body, ""]
    path = out_dir / "index.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def make_report(dataset: str | int | None, preset: str = "default", cases: Sequence[str] | None = None,
                num_cases: int = 2, out_dir: str | Path | None = None, quiet: bool = False,
                slice_view: str = "axial") -> Path:
    """Write the report folder of one dataset and preset.

    Args:
        dataset: id, ``TaskXX`` or full name in ``$vfnet_results`` (None: the only one).
        preset: training preset whose results to show.
        cases: case ids to draw; default: chosen from crossval.json (see :func:`choose_cases`).
        num_cases: how many cases to choose when ``cases`` is not given.
        out_dir: where to write; default ``$vfnet_results/TaskXX/<preset>/report``.
        quiet: no progress bar.
        slice_view: ``axial``, ``coronal`` or ``sagittal`` plane of the figure.

    Returns:
        The report folder (holding index.md, ``cases_<view>.png`` and ``curves/``).
    """
    if slice_view not in VIEWS:
        raise VfnetError(f"slice view '{slice_view}' unknown; expected one of {', '.join(VIEWS)}")
    if not cases and num_cases < 1:
        raise VfnetError(f"--num-cases must be at least 1, got {num_cases}")
    results = paths.results_dataset(dataset)
    preset_dir = results / preset
    if not preset_dir.is_dir():
        found = sorted(p.name for p in results.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise VfnetError(f"no results for preset '{preset}' in {results} (presets there: {', '.join(found) or 'none'})"
                         f"; train with: vfnet_train_all -d {results.name} --preset {preset}")
    out = Path(out_dir) if out_dir is not None else preset_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    plan = Plan.load(results)
    crossval_dir = preset_dir / "crossval"
    crossval = read_json(crossval_dir / "crossval.json") if (crossval_dir / "crossval.json").is_file() else None
    notes: list[str] = []
    rows: list[CaseRow] = []
    panels: list[str] = []
    figure = None
    preprocessed = paths.preprocessed_root() / results.name
    if not (preprocessed / "splits.json").is_file():
        notes.append(f"The preprocessed arrays of {results.name} are not in {paths.preprocessed_root()}, so no case "
                     f"can be drawn; run vfnet_plan_and_preprocess -d {results.name} on this machine.")
    else:
        drawer = _CaseDrawer(results, preset, plan, PreprocessedDataset(preprocessed))
        available = drawer.held_out_cases()
        if cases:
            unknown = [c for c in cases if c not in available]
            if unknown:
                raise VfnetError(f"case(s) {', '.join(unknown)} have no held-out maps under {preset_dir}; cases with "
                                 f"maps: {', '.join(available) or 'none (train the 2D units first)'}")
            chosen = [(case, "chosen") for case in cases]
        else:
            chosen = choose_cases(crossval, num_cases, available)
        if not chosen:
            notes.append("No held-out probability maps yet, so no case can be drawn; train the 2D fold units "
                         f"first (vfnet_train_all -d {results.name} --preset {preset}).")
        for case, why in tqdm(chosen, desc="report cases", unit="case", disable=True if quiet else None):
            rows.append(drawer.row(case, why))
        present = {name for row in rows for name in row.predictions}
        panels = [p for p in (*VIEWS, "majority", "vfn", "vfn-noimage") if p in present]
        if rows and "vfn" not in present:
            vfn_unit = _fold_units(plan)[drawer.data.fold_of(rows[0].case)][1]
            notes.append(f"No VFN is trained for preset '{preset}' yet: the figure shows the methods that exist. "
                         f"Train it with: {_train_hint(results.name, preset, 'vfn', vfn_unit)}")
        if rows and crossval is None and not cases:
            notes.append("No crossval.json yet, so the cases were not chosen by VFN gain: run vfnet_crossval.")
        if rows:
            figure = draw_case_rows(rows, panels, out / f"cases_{slice_view}.png", plan["target_spacing"],
                                    slice_view, plan.num_classes)
    crossval_md = crossval_dir / "crossval.md"
    curves = collect_curves(preset_dir, out / CURVES_DIR)
    write_index(out, f"vfnet report: {results.name} ({preset} preset, {plan['split_mode']})", notes, figure, rows,
                panels, crossval_md if crossval_md.is_file() else None, curves)
    return out
