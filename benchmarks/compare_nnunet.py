"""vfnet against nnU-Net v2 on the shared Hippocampus: the same training cases, the same CPU time.

Both tools train without the 50 cases of vfnet's fold 0 (the other 150 cases) and segment
those 50 from the raw images:

* vfnet: the models the fold-0 numbers of ``benchmarks/fusion.py`` come from (the three fold-0
  view units, the nine CCA view units that made the fold-0 VFN's training maps, and that VFN),
  applied with ``vfnet_predict -f 0`` and the fusion ``vfnet_crossval`` recorded. Its CPU time
  is the sum of those units' measured times in ``<vfnet-work>/timings.json``.
* nnU-Net v2 (installed in its own virtual environment, ``--nnunet-python``): MSD conversion,
  ``nnUNetv2_plan_and_preprocess -c 3d_fullres``, a ``splits_final.json`` whose fold 0 is vfnet's
  fold 0, and 3d_fullres training on the CPU for the same number of seconds. nnU-Net has no time
  limit, so a small trainer subclass written by this script (``nnUNetTrainer_vfnetBudget``) runs
  epochs of ``--iterations-per-epoch`` iterations until the budget is spent, re-sizing its poly
  learning-rate schedule to the number of epochs that fit; everything else is nnU-Net's default
  (network, augmentation, loss, SGD). Its own final validation then writes the 50 segmentations
  (with mirroring, as nnUNetv2_predict does by default).

Both sets of segmentations are scored with ``vfnet_evaluate --compare`` (Dice and HD95 per label,
paired p-values). Results: ``benchmarks/results/compare_nnunet.md`` (+ .json).

Usage:
    python -m venv /somewhere/nnunet_venv && /somewhere/nnunet_venv/bin/pip install nnunetv2
    python benchmarks/compare_nnunet.py --nnunet-python /somewhere/nnunet_venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion import DEFAULT_DATA, PRESET, use_work_folders
from machine import write_results

HERE = Path(__file__).resolve().parent
TRAINER = "nnUNetTrainer_vfnetBudget"
TRAINER_SOURCE = '''"""Written by vfnet's benchmarks/compare_nnunet.py: nnU-Net's default trainer under a wall-clock budget."""
import os
import time

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_vfnetBudget(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ["VFNET_NNUNET_BUDGET_S"])
        self.num_iterations_per_epoch = int(os.environ["VFNET_NNUNET_ITERATIONS"])
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        self.num_epochs = 10_000  # re-sized after every epoch to what the budget leaves
        self.started = time.perf_counter()
        self.epoch_seconds = []

    def on_epoch_start(self):
        self.epoch_started = time.perf_counter()
        super().on_epoch_start()

    def on_epoch_end(self):
        super().on_epoch_end()
        self.epoch_seconds.append(time.perf_counter() - self.epoch_started)
        typical = float(np.median(self.epoch_seconds[1:] or self.epoch_seconds))
        left = self.budget_s - (time.perf_counter() - self.started)
        self.num_epochs = self.current_epoch + max(0, int(left // typical))
        self.lr_scheduler.max_steps = max(self.num_epochs, 1)
        self.print_to_log_file(f"vfnet budget: {left:.0f} s left, {typical:.1f} s per epoch, "
                               f"stopping after epoch {self.num_epochs}")

    def run_training(self):
        # nnU-Net's loop, with the epoch count re-read every epoch
        self.on_train_start()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                outputs = [self.validation_step(next(self.dataloader_val))
                           for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(outputs)
            self.on_epoch_end()
        self.on_train_end()
'''


def run(command: list[str], env: dict, log: Path, cwd: Path | None = None) -> float:
    """Run a command with its output appended to ``log``; seconds it took."""
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=True, cwd=cwd)
    return time.perf_counter() - start


def vfnet_budget(vfnet_work: Path, folds: list[str]) -> tuple[float, list[str]]:
    """Seconds vfnet spent on the models behind fold 0: fold unit 0, the CCA units with fold 0, VFN 0."""
    timings = json.loads((vfnet_work / "timings.json").read_text())
    units = ["0"] + [f"cca_{'_'.join(sorted(('0', k), key=folds.index))}" for k in folds if k != "0"]
    keys = [key for key in timings
            if (key.startswith("2d ") and key.split()[-1] in units) or key == "vfn 0"]
    return sum(timings[k] for k in keys), keys


def link_cases(cases: list[str], source: Path, target: Path, suffix: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for case in cases:
        link = target / f"{case}{suffix}.nii.gz"
        if not link.exists():
            link.symlink_to(source / f"{case}.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnunet-python", type=Path, required=True, help="python of a venv with nnunetv2")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--vfnet-work", type=Path, default=HERE / "work" / "fusion",
                        help="benchmarks/fusion.py's work folder (its trained units and timings)")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "nnunet")
    parser.add_argument("--iterations-per-epoch", type=int, default=50)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    use_work_folders(args.vfnet_work.resolve())
    from vfnet import paths
    from vfnet.atomic import read_json

    results = paths.results_dataset(4)
    splits = read_json(results / "splits.json")["folds"]
    folds = list(splits)
    test_cases = sorted(splits["0"])
    train_cases = sorted(c for k in folds if k != "0" for c in splits[k])
    budget, budget_keys = vfnet_budget(args.vfnet_work, folds)
    print(f"vfnet's fold-0 models took {budget / 60:.1f} min ({len(budget_keys)} units); nnU-Net gets the same")

    env = {**os.environ, "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "pre"),
           "nnUNet_results": str(work / "res"), "nnUNet_n_proc_DA": "2", "nnUNet_compile": "f",
           "VFNET_NNUNET_BUDGET_S": f"{budget:.1f}", "VFNET_NNUNET_ITERATIONS": str(args.iterations_per_epoch)}
    bin_dir = args.nnunet_python.parent
    def ask_nnunet(code: str) -> str:
        return subprocess.run([str(args.nnunet_python), "-c", code], capture_output=True, text=True,
                              check=True).stdout.strip()

    package = ask_nnunet("import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))")
    nnunet_version = ask_nnunet("import importlib.metadata as m, torch; "
                                "print(m.version('nnunetv2'), 'with torch', torch.__version__)")
    trainer_file = Path(package) / "training" / "nnUNetTrainer" / "variants" / f"{TRAINER}.py"
    trainer_file.write_text(TRAINER_SOURCE)
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}

    def step(key: str, command: list[str]) -> None:
        if key not in state:
            state[key] = run(command, env, log)
            state_path.write_text(json.dumps(state, indent=1))
        print(f"nnU-Net {key}: {state[key]:.0f} s", flush=True)

    # nnU-Net's MSD converter insists on an imagesTs folder, which the shared copy lacks: stage links
    staged = work / "msd" / args.data.resolve().name
    (staged / "imagesTs").mkdir(parents=True, exist_ok=True)
    for name in ("imagesTr", "labelsTr", "dataset.json"):
        if not (staged / name).exists():
            (staged / name).symlink_to(args.data.resolve() / name)
    step("convert", [str(bin_dir / "nnUNetv2_convert_MSD_dataset"), "-i", str(staged), "-np", "2"])
    step("plan_and_preprocess", [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres",
                                 "-np", "2"])
    pre = work / "pre" / "Dataset004_Hippocampus"
    (pre / "splits_final.json").write_text(json.dumps([{"train": train_cases, "val": test_cases}], indent=1))
    plans_file = work / "pre" / "Dataset004_Hippocampus" / "nnUNetPlans.json"
    nnunet_batch = json.loads(plans_file.read_text())["configurations"]["3d_fullres"]["batch_size"]
    step("train_and_validate", [str(bin_dir / "nnUNetv2_train"), "4", "3d_fullres", "0", "-tr", TRAINER,
                                "-device", "cpu"])
    fold_dir = work / "res" / "Dataset004_Hippocampus" / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    nnunet_pred = fold_dir / "validation"
    training_log = max(fold_dir.glob("training_log_*.txt")).read_text()
    epoch_seconds = [float(line.split("Epoch time:")[1].split()[0]) for line in training_log.splitlines()
                     if "Epoch time:" in line]
    epochs = len(epoch_seconds)

    images, refs = work / "fold0_images", work / "fold0_labels"
    link_cases(test_cases, args.data.resolve() / "imagesTr", images, "_0000")
    link_cases(test_cases, args.data.resolve() / "labelsTr", refs, "")
    vfnet_bin = Path(sys.executable).parent
    vfnet_pred = work / "vfnet_fold0"
    vfnet_env = {**os.environ}
    if "vfnet_predict" not in state:
        state["vfnet_predict"] = run([str(vfnet_bin / "vfnet_predict"), "-i", str(images), "-o", str(vfnet_pred),
                                      "-d", "4", "--preset", PRESET, "-f", "0", "--device", "cpu", "--overwrite"],
                                     vfnet_env, log)
        state_path.write_text(json.dumps(state, indent=1))
    predict_log = [json.loads(line) for line in (vfnet_pred / "vfnet_predict.jsonl").read_text().splitlines()
                   if line.startswith("{")]
    setting = [entry for entry in predict_log if "fusion" in entry][-1]
    # short names, relative to the work folder, so the table names the tools and no machine paths
    for name, folder in (("vfnet", vfnet_pred), ("nnunet", nnunet_pred)):
        if not (work / name).exists():
            (work / name).symlink_to(folder)
    evaluation = work / "evaluation"
    run([str(vfnet_bin / "vfnet_evaluate"), "-r", refs.name, "-p", "vfnet", "--compare", "nnunet", "-d", "4",
         "-o", evaluation.name], vfnet_env, log, cwd=work)
    summary = read_json(evaluation / "summary.json")
    summary_md = (evaluation / "summary.md").read_text()
    body = f"""
Both tools trained without vfnet's fold 0 (the same {len(train_cases)} cases) and segmented its
{len(test_cases)} cases from the raw images, on this machine's 2 CPU cores, one after the other with
nothing else running.

| | vfnet (quick preset) | nnU-Net v2 3d_fullres |
|---|---|---|
| training CPU time | {budget / 60:.1f} min: 12 view units (3 fold-0 + 9 CCA, each with its held-out prediction) + VFN 0 | {budget / 60:.1f} min budget: {epochs} epochs × {args.iterations_per_epoch} iterations (+ {max(1, args.iterations_per_epoch // 5)} validation iterations each); preprocessing {state['plan_and_preprocess']:.0f} s not counted |
| prediction | `vfnet_predict -f 0`: fusion `{setting['fusion']}` (post-processing {setting['postprocess']}), {"VFN unit " + str(setting["vfn_unit"]) if setting.get("vfn_unit") else "no VFN"}; {state['vfnet_predict']:.0f} s for {len(test_cases)} cases incl. start-up | nnU-Net's final validation of fold 0 (sliding window with mirroring); training + validation wall {state['train_and_validate'] / 60:.1f} min |

`vfnet_evaluate` of both (it names each folder by its real name: `vfnet_fold0` is vfnet's output,
`validation` is nnU-Net's fold-0 validation output; nnU-Net {nnunet_version}):

{summary_md}

nnU-Net's own schedule is 1000 epochs × 250 iterations on a GPU; under this CPU budget it gets
{epochs * args.iterations_per_epoch} iterations, so this compares what each tool delivers for the same
small CPU budget, not their best results. One nnU-Net epoch took {min(epoch_seconds):.0f}-{max(epoch_seconds):.0f} s
here ({max(epoch_seconds) / (args.iterations_per_epoch * 1.2):.1f} s or more per iteration of its batch of
{nnunet_batch} patches with deep supervision, validation iterations included).
"""
    path = write_results("compare_nnunet", "vfnet against nnU-Net v2 on Hippocampus fold 0, same cases and CPU time",
                         body, {"budget_s": budget, "budget_units": budget_keys, "nnunet_epochs": epochs, "nnunet_epoch_seconds": epoch_seconds,
                                "iterations_per_epoch": args.iterations_per_epoch, "steps_s": state,
                                "vfnet_setting": setting, "nnunet_version": nnunet_version, "evaluation": summary})
    print(path.read_text())


if __name__ == "__main__":
    main()
