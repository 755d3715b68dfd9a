"""The attacks of issue 13, shared by tests/test_reliability.py and benchmarks/reliability.py.

Each attack runs the installed commands (subprocesses, so ``kill -9`` and file-size limits hit
a real process) or the click entry points (bad inputs), and returns an :class:`Outcome`: what
should happen, what happened, and whether it held. A :class:`Workspace` holds one tiny
synthetic dataset (8 training cases of 16 x 24 x 20), planned, preprocessed and with one
trained 3D unit (a tiny schedule written into plans.json), built once and shared.

Training after a resume is not asserted bit-identical to an uninterrupted run: the
checkpoint restores weights, optimizer, schedule and random states, but the batch
generator's position is not checkpointed, so the batches after a resume differ. What is
asserted: the resumed unit finishes its whole schedule and its final checkpoint loads with
``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TASK = "Task099_DemoOrgans"
TINY_3D = {"iterations": 12, "batch_size": 1, "lr": 0.01, "val_every": 3, "num_workers": 0, "val_batches": 1}
ENTRIES = {"vfnet_plan_and_preprocess": "vfnet_cli.plan:plan_and_preprocess_entry",
           "vfnet_train": "vfnet_cli.train:train_entry", "vfnet_predict": "vfnet_cli.predict:predict_entry",
           "vfnet_install_model": "vfnet_cli.deployment:install_model_entry"}


@dataclass
class Outcome:
    attack: str
    expected: str
    observed: str
    held: bool


def command(name: str) -> list[str]:
    """The installed console script, or the same entry point through this python when it is not installed."""
    found = shutil.which(name)
    if found:
        return [found]
    module, func = ENTRIES[name].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


class Workspace:
    """vfnet folders under ``root`` with the tiny dataset, its arrays and one trained 3D unit (fold 0)."""

    def __init__(self, root: Path, seed: int = 13):
        self.root, self.rng = Path(root), random.Random(seed)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.timings: dict[str, float] = {}
        self._set_folders(self.root / "main")

    def _set_folders(self, base: Path) -> None:
        for var in ("vfnet_raw", "vfnet_preprocessed", "vfnet_results"):
            (base / var).mkdir(parents=True, exist_ok=True)
            self.env[var] = str(base / var)

    @property
    def raw(self) -> Path:
        return Path(self.env["vfnet_raw"]) / TASK

    @property
    def preprocessed(self) -> Path:
        return Path(self.env["vfnet_preprocessed"]) / TASK

    @property
    def results(self) -> Path:
        return Path(self.env["vfnet_results"]) / TASK

    def run(self, args: list[str], timeout: float = 300, limit_bytes: int | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        preexec = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))) \
            if limit_bytes else None
        return subprocess.run(command(args[0]) + args[1:], check=False, env=env or self.env, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=preexec)

    def run_killed(self, args: list[str], after: float, env: dict | None = None) -> bool:
        """Start a command and SIGKILL it ``after`` seconds in; True when it was still running then."""
        process = subprocess.Popen(command(args[0]) + args[1:], env=env or self.env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=after)
            return False
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True

    def timed(self, key: str, args: list[str]) -> subprocess.CompletedProcess:
        start = time.perf_counter()
        result = self.run(args)
        self.timings[key] = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def build(self) -> Workspace:
        """Dataset, clean preprocessing, a tiny schedule, one trained 3D unit and a clean prediction."""
        from vfnet.demo_data import make_demo_dataset

        make_demo_dataset(Path(self.env["vfnet_raw"]), num_train=8, num_test=2, shape=(16, 24, 20))
        self.timed("preprocess", ["vfnet_plan_and_preprocess", "-np", "1", "-q"])
        set_tiny_schedule(self.preprocessed)
        self.timed("train", ["vfnet_train", "3d", "0", "-q", "--device", "cpu", "--num-threads", "1"])
        self.inputs = self.root / "inputs"
        self.inputs.mkdir(exist_ok=True)
        for path in sorted((self.raw / "imagesTr").iterdir())[:4]:
            shutil.copy(path, self.inputs / path.name)
        self.timed("predict", self.predict_args(self.root / "clean_predictions"))
        return self

    def predict_args(self, out: Path, source: Path | None = None) -> list[str]:
        return ["vfnet_predict", "-i", str(source or self.inputs), "-o", str(out), "--model", "3d", "-f", "0",
                "-q", "--device", "cpu"]

    def other_folders(self, name: str) -> dict:
        """An environment whose vfnet folders are fresh ones under ``name`` (raw data copied)."""
        saved = dict(self.env)
        self._set_folders(self.root / name)
        env, self.env = self.env, saved
        shutil.copytree(self.raw, Path(env["vfnet_raw"]) / TASK, dirs_exist_ok=True)
        return env


def set_tiny_schedule(preprocessed: Path) -> None:
    plans = preprocessed / "plans.json"
    plan = json.loads(plans.read_text())
    plan["presets"]["default"]["3d"].update(TINY_3D)
    plans.write_text(json.dumps(plan, indent=2))


def hidden_leftovers(folder: Path) -> list[str]:
    """Temporary or staging files that a finished run must not leave behind."""
    return sorted(str(p) for p in Path(folder).rglob(".*") if ".tmp" in p.name or p.name.startswith(".vfnet_"))


def label_arrays(folder: Path) -> dict[str, tuple]:
    import SimpleITK as sitk

    out = {}
    for path in sorted(Path(folder).glob("[!.]*.nii.gz")):
        image = sitk.ReadImage(str(path))
        out[path.name] = (sitk.GetArrayFromImage(image).tobytes(), image.GetSpacing(), image.GetOrigin(),
                          image.GetDirection())
    return out


def incomplete_outputs(folder: Path) -> list[str]:
    """Files under a final name that are empty or do not read back whole."""
    from vfnet.imageio import written_image_problem

    bad = []
    for path in Path(folder).rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.name.endswith(".nii.gz") and written_image_problem(path):
            bad.append(str(path))
        elif path.suffix == ".npy":
            try:
                np.load(path)
            except (ValueError, OSError, EOFError):
                bad.append(str(path))
        elif path.suffix == ".json" and path.stat().st_size == 0:
            bad.append(str(path))
    return bad


def _one_sentence(result) -> bool:
    text = (result.stderr if hasattr(result, "stderr") and result.stderr is not None else "") + \
        (result.stdout or "")
    return "Traceback" not in text and text.count("Error:") == 1


# --------------------------------------------------------------------------- kills
def kill_preprocessing(ws: Workspace, seed: int) -> Outcome:
    env = ws.other_folders(f"preprocess_kill_{seed}")
    after = random.Random(seed).uniform(0.5, 1.0) * ws.timings["preprocess"]
    killed = ws.run_killed(["vfnet_plan_and_preprocess", "-np", "1", "-q"], after, env)
    rerun = ws.run(["vfnet_plan_and_preprocess", "-np", "1", "-q"], env=env)
    folder = Path(env["vfnet_preprocessed"]) / TASK
    clean = {p.name: np.load(p) for p in (ws.preprocessed / "arrays").glob("[!.]*.npy")}
    again = {p.name: np.load(p) for p in (folder / "arrays").glob("[!.]*.npy")}
    same = clean.keys() == again.keys() and all(np.array_equal(clean[k], again[k]) for k in clean)
    same_files = all(json.loads((folder / f).read_text()) == json.loads((ws.preprocessed / f).read_text())
                     for f in ("fingerprint.json", "splits.json", "dataset.json"))
    leftovers = hidden_leftovers(folder)
    held = rerun.returncode == 0 and same and same_files and not leftovers
    return Outcome(f"kill -9 preprocessing at {after:.1f} s (seed {seed})",
                   "the rerun finishes; arrays and fingerprint identical to a clean run; no temporary files",
                   f"{'killed' if killed else 'finished before the kill'}; rerun exit {rerun.returncode}; "
                   f"{len(again)} arrays, identical: {same}; json identical: {same_files}; leftovers: {len(leftovers)}",
                   held)


def kill_training(ws: Workspace, seed: int) -> Outcome:
    from vfnet.checkpoint import load_checkpoint
    from vfnet.errors import CheckpointError

    unit = str(1 + seed % 3)
    args = ["vfnet_train", "3d", unit, "-q", "--device", "cpu", "--num-threads", "1"]
    after = random.Random(seed).uniform(0.4, 1.0) * ws.timings["train"]
    killed = ws.run_killed(args, after)
    rerun = ws.run(args + ["--continue"])
    out = ws.results / "default" / "3d" / unit
    try:
        iteration = int(load_checkpoint(out / "checkpoint_final.pth")["iteration"])
    except CheckpointError as exc:
        iteration = f"unloadable ({exc})"
    leftovers = hidden_leftovers(out)
    held = rerun.returncode == 0 and iteration == TINY_3D["iterations"] and not leftovers \
        and (out / "summary.json").is_file()
    return Outcome(f"kill -9 training of 3d unit {unit} at {after:.1f} s (seed {seed}), then --continue",
                   f"the resumed unit finishes ({TINY_3D['iterations']} iterations) and its final checkpoint loads "
                   "with weights_only=True",
                   f"{'killed' if killed else 'finished before the kill'}; resume exit {rerun.returncode}; final "
                   f"iteration {iteration}; leftovers: {len(leftovers)}", held)


def kill_prediction(ws: Workspace, seed: int) -> Outcome:
    out = ws.root / f"predict_kill_{seed}"
    after = random.Random(seed).uniform(0.5, 1.0) * ws.timings["predict"]
    killed = ws.run_killed(ws.predict_args(out), after)
    rerun = ws.run(ws.predict_args(out))
    same = label_arrays(out) == label_arrays(ws.root / "clean_predictions")
    leftovers = hidden_leftovers(out)
    held = rerun.returncode == 0 and same and not leftovers and len(label_arrays(out)) == 4
    return Outcome(f"kill -9 prediction at {after:.1f} s (seed {seed}), then rerun",
                   "the rerun writes every case; labels bit-identical to a clean run; no temporary files",
                   f"{'killed' if killed else 'finished before the kill'}; rerun exit {rerun.returncode}; labels "
                   f"identical: {same}; leftovers: {len(leftovers)}", held)


# --------------------------------------------------------------------------- full disk
def full_disk_prediction(ws: Workspace) -> Outcome:
    out = ws.root / "predict_fsize"
    result = ws.run(ws.predict_args(out), limit_bytes=230)  # the log's first line fits, a label does not
    bad = incomplete_outputs(out)
    rerun = ws.run(ws.predict_args(out))
    same = label_arrays(out) == label_arrays(ws.root / "clean_predictions")
    held = result.returncode == 2 and _one_sentence(result) and not bad and rerun.returncode == 0 and same
    return Outcome("predict under a 230-byte file-size limit (a full disk), then rerun without it",
                   "exit 2 with one sentence; nothing empty or partial under a final name; the rerun completes",
                   f"exit {result.returncode}: {result.stderr.strip()[:160]!r}; incomplete files: {len(bad)}; "
                   f"rerun exit {rerun.returncode}, labels identical: {same}", held)


def full_disk_preprocessing(ws: Workspace) -> Outcome:
    env = ws.other_folders("preprocess_fsize")
    result = ws.run(["vfnet_plan_and_preprocess", "-np", "1", "-q"], limit_bytes=20_000, env=env)
    folder = Path(env["vfnet_preprocessed"]) / TASK
    bad = incomplete_outputs(folder)
    leftovers = hidden_leftovers(folder)
    held = result.returncode == 2 and _one_sentence(result) and not bad and not leftovers
    return Outcome("preprocess under a 20 kB file-size limit (a full disk)",
                   "exit 2 with one sentence; no partial array under a final name; no temporary files",
                   f"exit {result.returncode}: {result.stderr.strip()[:160]!r}; incomplete: {len(bad)}; "
                   f"leftovers: {len(leftovers)}", held)


# --------------------------------------------------------------------------- bad inputs
def _expect(ws: Workspace, name: str, args: list[str], code: int, needle: str, env: dict | None = None) -> Outcome:
    result = ws.run(args, env=env)
    text = result.stdout + result.stderr
    one = "Traceback" not in text and (code != 2 or _one_sentence(result))
    held = result.returncode == code and needle.lower() in text.lower() and one
    return Outcome(name, f"exit {code}, no traceback, message mentions '{needle}'",
                   f"exit {result.returncode}: {text.strip().splitlines()[-1][:200] if text.strip() else ''!r}", held)


def _bad_dataset(ws: Workspace, name: str, edit: Callable[[Path], None]) -> dict:
    env = ws.other_folders(name)
    edit(Path(env["vfnet_raw"]) / TASK)
    return env


def _dataset_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(raw: Path) -> None:
        data = json.loads((raw / "dataset.json").read_text())
        change(data)
        (raw / "dataset.json").write_text(json.dumps(data))
    return edit


def bad_inputs(ws: Workspace) -> list[Outcome]:
    import SimpleITK as sitk

    plan = ["vfnet_plan_and_preprocess", "-np", "1", "-q"]
    out = [
        _expect(ws, "dataset.json with numTraining 'eight'", plan, 2, "numTraining",
                _bad_dataset(ws, "bad_num", _dataset_json(lambda d: d.update(numTraining="eight")))),
        _expect(ws, "dataset.json that is not UTF-8", plan, 2, "dataset.json",
                _bad_dataset(ws, "bad_utf8", lambda raw: (raw / "dataset.json").write_bytes(b'{"name": "\xff\xfe"}'))),
        _expect(ws, "dataset.json declaring label value 1.7", plan, 2, "non-integer value",
                _bad_dataset(ws, "bad_label", _dataset_json(lambda d: d["labels"].update(organ_a=1.7)))),
    ]

    def truncate(raw: Path) -> None:
        path = raw / "imagesTr" / "demo_001_0000.nii.gz"
        path.write_bytes(path.read_bytes()[:200])

    out.append(_expect(ws, "a truncated training image", plan, 2, "demo_001_0000",
                       _bad_dataset(ws, "bad_trunc", truncate)))

    def nan_label(raw: Path) -> None:
        path = raw / "labelsTr" / "demo_002.nii.gz"
        label = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(label).astype(np.float32)
        array[0, 0, 0] = np.nan
        edited = sitk.GetImageFromArray(array)
        edited.CopyInformation(label)
        sitk.WriteImage(edited, str(path))

    out.append(_expect(ws, "NaN voxels in a float label map", plan, 2, "NaN or Inf", _bad_dataset(ws, "bad_nan", nan_label)))

    out += bad_prediction_inputs(ws)
    existing = ws.root / "a_file.txt"
    existing.write_text("not a folder")
    out.append(_expect(ws, "predict with -o naming an existing file", ws.predict_args(existing), 2, "existing file"))
    single = ws.inputs / "demo_000_0000.nii.gz"
    out.append(_expect(ws, "predict one file into its own folder", ws.predict_args(ws.inputs, single), 2,
                       "own folder"))

    # training and models
    unfinished = ws.results / "default" / "3d" / "3"  # a copy of unit 0 stopped before its end
    shutil.copytree(ws.results / "default" / "3d" / "0", unfinished, dirs_exist_ok=True)
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "summary.json"):
        (unfinished / name).unlink(missing_ok=True)
    latest = unfinished / "checkpoint_latest.pth"
    latest.write_bytes(latest.read_bytes()[:5000])
    out.append(_expect(ws, "corrupt checkpoint_latest.pth with --continue",
                       ["vfnet_train", "3d", "3", "--continue", "-q", "--device", "cpu"], 2, "checkpoint_latest.pth"))
    out.append(_expect(ws, "retrain a finished unit without --overwrite",
                       ["vfnet_train", "3d", "0", "-q", "--device", "cpu"], 2, "--overwrite"))
    out += model_zip_attacks(ws)
    return out


def bad_prediction_inputs(ws: Workspace) -> list[Outcome]:
    """One prediction run over a folder of bad cases and one good case: each bad case fails by name (exit 1),
    the good one is written."""
    import SimpleITK as sitk
    from test_dicom import write_series

    source, target = ws.root / "bad_inputs", ws.root / "bad_inputs_out"
    source.mkdir(exist_ok=True)
    reference = sitk.ReadImage(str(ws.inputs / "demo_000_0000.nii.gz"))
    shutil.copy(ws.inputs / "demo_000_0000.nii.gz", source / "good_0000.nii.gz")
    nan = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(reference).shape, np.nan, dtype=np.float32))
    nan.CopyInformation(reference)
    sitk.WriteImage(nan, str(source / "allnan_0000.nii.gz"))
    (source / "cut_0000.nii.gz").write_bytes((ws.inputs / "demo_000_0000.nii.gz").read_bytes()[:300])
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 1, 1), np.float32)), str(source / "dot_0000.nii.gz"))
    write_series(source / "gappy", "1.2.3.1", 7, step=2.0, drop=(3,))
    result = ws.run(ws.predict_args(target, source))
    text = result.stdout + result.stderr
    failed = {line.split(":")[0].removeprefix("FAILED ").strip(): line for line in text.splitlines()
              if line.startswith("FAILED")}
    clean = "Traceback" not in text and result.returncode == 1
    cases = [("an all-NaN image", "allnan", "NaN"), ("a truncated image", "cut", "cut_0000"),
             ("a DICOM series with a missing slice", "gappy", "missing slice")]
    out = [Outcome(f"predict {what}", f"exit 1, case '{case}' failed by name ('{needle}'), others written",
                   f"exit {result.returncode}: {failed.get(case, 'not reported')[:200]!r}",
                   clean and needle in failed.get(case, "")) for what, case, needle in cases]
    dot = "dot" in failed or (target / "dot.nii.gz").is_file()
    out.append(Outcome("predict a 1-voxel image", "no traceback; the case is segmented or fails by name",
                       f"{'failed: ' + failed['dot'][:160] if 'dot' in failed else 'written'}", clean and dot))
    good = (target / "good.nii.gz").is_file() and written_image_problem_free(target / "good.nii.gz")
    out.append(Outcome("the good case beside the bad ones", "written and complete", f"written: {good}", good))
    return out


def written_image_problem_free(path: Path) -> bool:
    from vfnet.imageio import written_image_problem

    return written_image_problem(path) is None


def model_zip_attacks(ws: Workspace) -> list[Outcome]:
    import hashlib
    import io

    import torch

    def zip_with(name: str, files: dict[str, bytes], declared: dict[str, int] | None = None) -> Path:
        manifest = {"format": "vfnet_model", "format_version": 1, "dataset": "Task098_Attack", "preset": "default",
                    "units": [{"network": "3d", "unit": "0"}],
                    "files": {rel: {"sha256": hashlib.sha256(data).hexdigest(),
                                    "bytes": (declared or {}).get(rel, len(data))} for rel, data in files.items()}}
        path = ws.root / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("vfnet_model.json", json.dumps(manifest))
            for rel, data in files.items():
                archive.writestr(f"Task098_Attack/{rel}", data)
        return path

    plans = (ws.results / "plans.json").read_bytes().replace(b"Task099_DemoOrgans", b"Task098_Attack")
    checkpoint = ws.results / "default" / "3d" / "0" / "checkpoint_final.pth"
    buffer = io.BytesIO()
    marker = ws.root / "pwned"
    torch.save({"network": {}, "payload": _RunsCode(marker)}, buffer)
    env = ws.other_folders("install")
    install = ["vfnet_install_model"]
    rel = "default/3d/0/checkpoint_final.pth"
    bomb = zip_with("pickle.zip", {"plans.json": plans, rel: buffer.getvalue()})
    large = zip_with("large.zip", {"plans.json": plans, rel: checkpoint.read_bytes(),
                                   "default/crossval/crossval.md": bytes(20 * 2**20)},
                     {"default/crossval/crossval.md": 100})
    malformed = ws.root / "malformed.zip"
    with zipfile.ZipFile(zip_with("base.zip", {"plans.json": plans, rel: checkpoint.read_bytes()})) as source, \
            zipfile.ZipFile(malformed, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "vfnet_model.json":
                manifest = json.loads(data)
                manifest["files"]["plans.json"] = "abc"
                data = json.dumps(manifest).encode()
            target.writestr(info.filename, data)
    outcomes = [
        _expect(ws, "install a zip whose checkpoint would run code (pickle with __reduce__)",
                install + [str(bomb)], 2, "could run code", env),
        _expect(ws, "install a zip with a 20 MiB member declared as 100 bytes", install + [str(large)], 2,
                "declares", env),
        _expect(ws, "install a zip with a malformed manifest entry", install + [str(malformed)], 2, "malformed", env),
    ]
    root = Path(env["vfnet_results"])
    left = [p.name for p in root.iterdir()]
    outcomes.append(Outcome("nothing installed, staged or run by the refused zips",
                            "results folder empty; the pickle's code never ran",
                            f"entries: {left}; code ran: {marker.exists()}", not left and not marker.exists()))
    return outcomes


class _RunsCode:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_all(root: Path, seed: int = 13, kills: int = 1) -> list[Outcome]:
    """Every attack, in a fresh workspace under ``root``."""
    ws = Workspace(root, seed).build()
    outcomes = []
    for index in range(kills):
        outcomes += [kill_preprocessing(ws, seed + index), kill_training(ws, seed + index),
                     kill_prediction(ws, seed + index)]
    outcomes += [full_disk_prediction(ws), full_disk_preprocessing(ws)]
    outcomes += bad_inputs(ws)
    return outcomes
