"""Export and install of trained models: byte-exact round trip, unsafe zips refused, no silent overwrite."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import synthetic_plan

from vfnet import paths
from vfnet.atomic import write_json
from vfnet.deployment import MANIFEST, export_model, install_model, read_manifest
from vfnet.errors import ModelNotFoundError, VfnetError
from vfnet.experiment_planning.plans import Plan
from vfnet.fusion.models import load_vfn
from vfnet.networks.vfn import build_vfn
from vfnet.views import VIEWS
from vfnet_cli.deployment import export_model_entry, install_model_entry

NAME = "Task07_Tiny"
PRESET = "quick"


def _plan(split_mode: str) -> dict:
    plan = synthetic_plan(NAME, num_classes=2, modality="CT", split_mode=split_mode, num_folds=3)
    plan["vfn"].update(patch_size=[8, 8, 8], stride=[8, 8, 8], roi_margin=[2, 2, 2], features=[2, 4, 4, 8],
                       view_prior=False)
    return plan


def _unit(results: Path, network: str, unit: str, seed: int) -> None:
    folder = paths.unit_dir(results, PRESET, network, unit)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save({"network": {"w": torch.randn(3, 3)}, "history": [{"iteration": 1}]}, folder / "checkpoint_final.pth")
    torch.save({"network": {"w": torch.zeros(1)}}, folder / "checkpoint_latest.pth")
    write_json(folder / "unit.json", {"network": network, "unit": unit, "preset": PRESET, "train_cases": ["a"]})
    write_json(folder / "summary.json", {"seed": seed})
    (folder / "predictions").mkdir(exist_ok=True)
    (folder / "predictions" / "a.npz").write_bytes(b"held-out maps")


def fake_results(split_mode: str = "cca", with_vfn: bool = True) -> Path:
    """A trained-looking results folder: every 2D unit of the plan, the deployment VFN, crossval records."""
    results = paths.results_root() / NAME
    plan = _plan(split_mode)
    write_json(results / "plans.json", plan)
    for name in ("dataset.json", "fingerprint.json", "splits.json"):
        write_json(results / name, {"file": name})
    for seed, unit in enumerate(plan["units"]["2d"]):
        for view in VIEWS:
            _unit(results, f"2d_{view}", unit["name"], seed)
    if with_vfn:  # the VFN of every test fold (they fuse the fold units' maps) and the VFN 'all'
        for seed, vfn_unit in enumerate([u["name"] for u in plan["units"]["vfn"]]):
            folder = paths.unit_dir(results, PRESET, "vfn", vfn_unit)
            folder.mkdir(parents=True)
            torch.manual_seed(3 + seed)
            torch.save({"network": build_vfn(plan, 1, 2).state_dict()}, folder / "checkpoint_final.pth")
            write_json(folder / "unit.json", {"network": "vfn", "unit": vfn_unit})
    write_json(results / PRESET / "crossval" / "best_method.json", {"method": "vfn", "postprocess": True})
    (results / PRESET / "crossval" / "crossval.md").write_text("| method | overall |\n")
    return results


def _use_results_root(monkeypatch, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("vfnet_results", str(folder))


def test_export_then_install_reproduces_every_file(vfnet_env, tmp_path, monkeypatch):
    source = fake_results()
    archive = export_model("7", tmp_path / "model.zip", preset=PRESET)
    manifest = read_manifest(archive)
    assert manifest["dataset"] == NAME and manifest["preset"] == PRESET
    assert manifest["fusion"] == {"method": "vfn", "postprocess": True}
    units = {(u["network"], u["unit"]) for u in manifest["units"]}
    # the K fold units of each view, their 2D 'all' units, the K fold VFNs and the VFN 'all'; no CCA unit
    assert units == ({(f"2d_{v}", u) for v in VIEWS for u in ("0", "1", "2", "all")}
                     | {("vfn", u) for u in ("0", "1", "2", "all")})

    _use_results_root(monkeypatch, tmp_path / "other_machine")
    installed = install_model(archive)
    assert installed == tmp_path / "other_machine" / NAME
    exported = set(manifest["files"])
    assert exported == {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()}
    for rel in exported:
        assert (installed / rel).read_bytes() == (source / rel).read_bytes(), rel
    assert "quick/2d_axial/0/checkpoint_final.pth" in exported and "quick/crossval/crossval.md" in exported
    assert not any("predictions" in rel or "checkpoint_latest" in rel or "cca_" in rel for rel in exported)
    # the installed VFN loads into the planned network with the trained weights
    plan = Plan.load(installed)
    model = load_vfn(paths.unit_dir(installed, PRESET, "vfn", "all"), plan, fold_batch_norm=False)
    original = torch.load(source / PRESET / "vfn" / "all" / "checkpoint_final.pth")["network"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    assert not [p for p in installed.parent.iterdir() if p.name.startswith(".vfnet_install_")]


def test_missing_vfn_names_the_training_command(vfnet_env, tmp_path):
    fake_results(with_vfn=False)
    with pytest.raises(ModelNotFoundError, match="vfnet_train vfn 0") as info:
        export_model(NAME, tmp_path / "model.zip", preset=PRESET)
    assert "vfnet_build_fusion_set -f 0" in str(info.value)
    assert not (tmp_path / "model.zip").exists()


def test_holdout_and_single_model_exports(vfnet_env, tmp_path):
    fake_results("holdout")
    units = {(u["network"], u["unit"]) for u in read_manifest(export_model(NAME, tmp_path / "h.zip", PRESET))["units"]}
    assert units == {(f"2d_{v}", u) for v in VIEWS for u in ("holdout", "all")} | {("vfn", "holdout")}
    single = read_manifest(export_model(NAME, tmp_path / "s.zip", PRESET, include_all_folds=False))
    assert {(u["network"], u["unit"]) for u in single["units"]} == {(f"2d_{v}", "all") for v in VIEWS} | {
        ("vfn", "holdout")}


def _evil_zip(path: Path, member: str) -> Path:
    manifest = {"format": "vfnet_model", "format_version": 1, "dataset": NAME, "preset": PRESET, "units": [],
                "files": {}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MANIFEST, json.dumps(manifest))
        archive.writestr(f"{NAME}/plans.json", json.dumps(_plan("cca")))
        archive.writestr(member, "evil")
    return path


@pytest.mark.parametrize("member", ["../evil", f"{NAME}/../../evil", "/tmp/evil", "Task07_Other/plans.json"])
def test_zip_with_escaping_paths_is_rejected(vfnet_env, tmp_path, member):
    archive = _evil_zip(tmp_path / "evil.zip", member)
    with pytest.raises(VfnetError, match="refusing to install"):
        install_model(archive)
    root = paths.results_root()
    assert list(root.iterdir()) == [] and not (tmp_path / "evil").exists()


def test_corrupt_member_is_rejected_and_nothing_installed(vfnet_env, tmp_path, monkeypatch):
    fake_results()
    archive = export_model(NAME, tmp_path / "model.zip", preset=PRESET)
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tampered, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, data + b"x" if info.filename.endswith("vfn/all/checkpoint_final.pth") else data)
    _use_results_root(monkeypatch, tmp_path / "other")
    with pytest.raises(VfnetError, match="corrupt"):
        install_model(tampered)
    assert list((tmp_path / "other").iterdir()) == []


def test_install_over_existing_checkpoints_needs_overwrite(vfnet_env, tmp_path, monkeypatch):
    fake_results()
    archive = export_model(NAME, tmp_path / "model.zip", preset=PRESET)
    _use_results_root(monkeypatch, tmp_path / "other")
    target = install_model(archive)
    checkpoint = target / PRESET / "vfn" / "all" / "checkpoint_final.pth"
    original = checkpoint.read_bytes()
    checkpoint.write_bytes(b"a model trained here")
    with pytest.raises(VfnetError, match="--overwrite") as info:
        install_model(archive)
    assert str(checkpoint) in str(info.value)
    assert checkpoint.read_bytes() == b"a model trained here"

    result = CliRunner().invoke(install_model_entry, [str(archive)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = CliRunner().invoke(install_model_entry, [str(archive), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert checkpoint.read_bytes() == original
    assert f"vfnet_predict -d {NAME} --preset {PRESET}" in result.output


def test_cli_export(vfnet_env, tmp_path):
    fake_results()
    result = CliRunner().invoke(export_model_entry, ["-d", "Task07", "-o", str(tmp_path / "m.zip"), "--preset", PRESET])
    assert result.exit_code == 0, result.output
    assert "Exported 16 unit(s) of Task07_Tiny" in result.output and zipfile.is_zipfile(tmp_path / "m.zip")
    # an untrained preset: the trained ones and the command that works
    result = CliRunner().invoke(export_model_entry, ["-o", str(tmp_path / "m.zip"), "--preset", "default"])
    assert result.exit_code == 2 and "trained preset(s): quick" in result.output
    assert f"vfnet_export_model -o {tmp_path / 'm.zip'} --preset quick" in result.output
    # a missing unit of the trained preset (found without --preset): the command that trains it
    (paths.unit_dir(paths.results_root() / NAME, PRESET, "2d_axial", "0") / "checkpoint_final.pth").unlink()
    result = CliRunner().invoke(export_model_entry, ["-o", str(tmp_path / "m.zip")])
    assert result.exit_code == 2 and "vfnet_train 2d axial 0" in result.output


def test_prediction_pairs_each_fold_unit_with_its_own_vfn(vfnet_env):
    # fold k's VFN fuses fold unit k's maps (the pair cross-validation scored); vfn-all is a separate method
    from vfnet.errors import ModelNotFoundError
    from vfnet.prediction.models import deployment_units, load_deployed_models

    results = fake_results()
    plan = Plan(_plan("cca"))
    assert deployment_units(plan, None) == (["0", "1", "2"], ["0", "1", "2"])
    assert deployment_units(plan, ["1"]) == (["1"], ["1"])
    assert deployment_units(plan, ["all"]) == (["all"], ["all"])
    assert deployment_units(Plan(_plan("holdout")), None) == (["holdout"], ["holdout"])
    with pytest.MonkeyPatch.context() as patch:  # the fake 2D checkpoints hold no real network
        patch.setattr("vfnet.prediction.models.load_unit_network", lambda *a, **k: None)
        models = load_deployed_models(NAME, PRESET, fusion="vfn", device="cpu")
        assert models.fusion_units == ["0", "1", "2"] and len(models.fusion_models["vfn"]) == 3
        assert load_deployed_models(NAME, PRESET, fusion="vfn-all", device="cpu").fusion_units == ["all"]
        shutil.rmtree(paths.unit_dir(results, PRESET, "vfn", "2"))
        with pytest.raises(ModelNotFoundError, match="no trained vfn model '2'.*vfnet_train vfn 2"):
            load_deployed_models(NAME, PRESET, fusion="vfn", device="cpu")
        with pytest.raises(ModelNotFoundError, match="no stack weights for unit 0.*vfnet_crossval"):
            load_deployed_models(NAME, PRESET, fusion="stack", device="cpu")


def test_trained_3d_units_travel_with_the_model(vfnet_env, tmp_path):
    results = fake_results()
    _unit(results, "3d", "0", 9)  # only fold 0 of the 3D baseline is trained
    manifest = read_manifest(export_model(NAME, tmp_path / "model.zip", preset=PRESET))
    units = {(u["network"], u["unit"]) for u in manifest["units"]}
    assert ("3d", "0") in units and ("3d", "1") not in units
    assert "quick/3d/0/checkpoint_final.pth" in manifest["files"]
    assert not any(rel.startswith("quick/3d/0/predictions") for rel in manifest["files"])


def _rezip(source: Path, target: Path, replace: dict[str, bytes], manifest_edit=None) -> Path:
    """Copy a model zip, replacing members by name suffix and optionally editing the manifest."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == MANIFEST and manifest_edit:
                manifest = json.loads(data)
                manifest_edit(manifest)
                data = json.dumps(manifest).encode()
            for suffix, replacement in replace.items():
                if info.filename.endswith(suffix):
                    data = replacement
            new.writestr(info.filename, data)
    return target


def test_member_larger_than_its_manifest_is_refused_while_streaming(vfnet_env, tmp_path, monkeypatch):
    from vfnet.zipsafe import extract_member

    fake_results()
    archive = export_model(NAME, tmp_path / "model.zip", preset=PRESET)
    bomb = _rezip(archive, tmp_path / "bomb.zip", {"quick/crossval/crossval.md": bytes(50 * 2**20)})
    assert bomb.stat().st_size < 2**20  # 50 MiB of zeros compress to almost nothing
    _use_results_root(monkeypatch, tmp_path / "other")
    with pytest.raises(VfnetError, match="not the .* declares"):
        install_model(bomb)
    assert list((tmp_path / "other").iterdir()) == []
    # a header that lies: the bytes are counted while unpacking, and nothing past the declared size is written
    with zipfile.ZipFile(bomb) as opened:
        info = next(i for i in opened.infolist() if i.filename.endswith("crossval.md"))
        with pytest.raises(VfnetError, match="larger than the 1000 bytes"):
            extract_member(opened, info, tmp_path / "out.md", declared_bytes=1000, label="bomb.zip")
    assert (tmp_path / "out.md").stat().st_size <= 1000


def test_declared_total_above_the_cap_and_malformed_entries_are_refused(vfnet_env, tmp_path):
    fake_results()
    archive = export_model(NAME, tmp_path / "model.zip", preset=PRESET)

    def huge(manifest):
        manifest["files"]["plans.json"]["bytes"] = 2**50

    def malformed(manifest):
        manifest["files"]["plans.json"] = "abc"

    for edit, message in ((huge, "more than the 32 GiB"), (malformed, "entry 'plans.json' is malformed")):
        result = CliRunner().invoke(install_model_entry, [str(_rezip(archive, tmp_path / "bad.zip", {}, edit))])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert [p.name for p in paths.results_root().iterdir()] == [NAME]  # only the source: nothing installed or staged


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "pwned",))


def test_checkpoint_that_would_run_code_is_refused(vfnet_env, tmp_path, monkeypatch):
    import hashlib
    import io

    fake_results()
    archive = export_model(NAME, tmp_path / "model.zip", preset=PRESET)
    buffer = io.BytesIO()
    torch.save({"network": {}, "payload": _RunsCode()}, buffer)
    payload = buffer.getvalue()
    rel = f"{PRESET}/vfn/all/checkpoint_final.pth"

    def honest_checksum(manifest):  # the manifest matches the payload: checksums alone cannot catch it
        manifest["files"][rel] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}

    evil = _rezip(archive, tmp_path / "evil.zip", {rel: payload}, honest_checksum)
    _use_results_root(monkeypatch, tmp_path / "other")
    result = CliRunner().invoke(install_model_entry, [str(evil)])
    assert result.exit_code == 2, result.output
    assert "could run code" in result.output and rel in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (Path(__file__).parent / "pwned").exists()
    assert list((tmp_path / "other").iterdir()) == []


def test_exported_checkpoints_hold_weights_only_and_stale_staging_is_removed(vfnet_env, tmp_path, monkeypatch):
    from vfnet.checkpoint import load_checkpoint

    results = fake_results()
    final = paths.unit_dir(results, PRESET, "2d_axial", "0") / "checkpoint_final.pth"
    state = torch.load(final)
    torch.save({**state, "optimizer": {"state": {}, "param_groups": []}, "rng": {"torch": torch.get_rng_state()}},
               final)
    archive = export_model(NAME, tmp_path / "model.zip", preset=PRESET)
    _use_results_root(monkeypatch, tmp_path / "other")
    stale = tmp_path / "other" / ".vfnet_install_999999999_abc"  # a killed install's staging (no such process)
    (stale / "files").mkdir(parents=True)
    installed = install_model(archive)
    exported = load_checkpoint(paths.unit_dir(installed, PRESET, "2d_axial", "0") / "checkpoint_final.pth")
    assert set(exported) == {"network", "history"} and torch.equal(exported["network"]["w"], state["network"]["w"])
    assert not stale.exists()
