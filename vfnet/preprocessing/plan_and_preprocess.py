"""vfnet_plan_and_preprocess as a library call: check, fingerprint, plan, split, preprocess."""

from __future__ import annotations

import time

from vfnet import paths
from vfnet.atomic import write_json
from vfnet.dataset import training_cases
from vfnet.experiment_planning.fingerprint import compute_fingerprint
from vfnet.experiment_planning.plans import DEFAULT_FOLDS, Plan, make_splits, plan_experiment, preprocessing_hash
from vfnet.integrity import verify_dataset
from vfnet.preprocessing.preprocessing import preprocess_dataset


def plan_and_preprocess(dataset: str | int | None, num_processes: int = 2, num_folds: int = DEFAULT_FOLDS,
                        split_mode: str | None = None, verify_only: bool = False, quiet: bool = False) -> dict:
    """Check the raw dataset, then write fingerprint, plan, splits and preprocessed arrays.

    The integrity check always runs first; if it fails nothing is written.

    Returns:
        The plan (also in ``$vfnet_preprocessed/TaskXX_Name/plans.json``).
    """
    start = time.perf_counter()
    raw = paths.raw_dataset(dataset)
    info, reports = verify_dataset(raw, num_processes=num_processes, quiet=quiet)
    if verify_only:
        return {}
    name = raw.name
    fingerprint = compute_fingerprint(info, reports)
    plan = plan_experiment(info, fingerprint, name, num_folds=num_folds, split_mode=split_mode)
    Plan(plan)  # the planner writes only what the schema reads
    out = paths.preprocessed_root() / name
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dataset.json", info.to_json())
    write_json(out / "splits.json", make_splits(fingerprint["cases"], plan["num_folds"], plan["split_mode"]))
    write_json(out / "plans.json", plan)
    plan_hash = preprocessing_hash(plan)
    done, skipped = preprocess_dataset(training_cases(raw, info), plan, plan_hash, out,
                                       num_processes=num_processes, quiet=quiet)
    # written once the arrays are current, so the fingerprint never describes raw files the arrays do not
    write_json(out / "fingerprint.json", fingerprint)
    plan["_run"] = {"preprocessed": done, "skipped": skipped, "seconds": round(time.perf_counter() - start, 1),
                    "folder": str(out)}
    return plan


def plan_summary(plan: dict) -> str:
    """A few readable lines about a plan."""
    lines = [
        f"Plan for {plan['dataset_name']} (schema {plan['schema_version']})",
        f"  classes        : {', '.join(f'{v}={k}' for k, v in plan['labels'].items())}",
        f"  target spacing : {' x '.join(f'{s:.3g}' for s in plan['target_spacing'])} mm (z, y, x)",
        f"  median shape   : {' x '.join(str(s) for s in plan['median_shape'])}",
        f"  normalization  : {', '.join(n['scheme'] for n in plan['normalization'].values())}",
    ]
    for view, spec in plan["views"].items():
        lines.append(f"  2D {view:<11}: patch {spec['patch_size'][0]}x{spec['patch_size'][1]}, "
                     f"{spec['context_slices']} context slices, {spec['num_poolings']} poolings, "
                     f"features {spec['features']}")
    vfn = plan["vfn"]
    lines.append(f"  VFN            : patch {'x'.join(map(str, vfn['patch_size']))}, ROI margin {vfn['roi_margin']}, "
                 f"stride {vfn['stride']}")
    u3 = plan["unet3d"]
    lines.append(f"  3D U-Net       : patch {'x'.join(map(str, u3['patch_size']))}, features {u3['features']}, "
                 f"stride {u3['stride']}")
    units = plan["units"]
    lines.append(f"  split          : {plan['split_mode']} over folds {', '.join(plan['fold_names'])}; "
                 f"{len(units['2d'])} 2D units per view, {len(units['vfn'])} VFN units, {len(units['3d'])} 3D units")
    training = plan["training"]
    lines.append(f"  training       : seed {training['seed']}, validation fraction {training['validation_fraction']}; "
                 f"presets {', '.join(plan['presets'])}")
    return "\n".join(lines)
