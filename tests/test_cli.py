"""Every installed command answers --help and --version."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from vfnet import __version__


def _scripts(pyproject: Path) -> dict[str, str]:
    """[project.scripts] of pyproject.toml (tomllib is Python 3.11+; vfnet supports 3.10)."""
    section = pyproject.read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return {name.strip(): target.strip().strip('"') for name, target in
            (line.split("=", 1) for line in section.splitlines() if "=" in line)}


SCRIPTS = _scripts(Path(__file__).resolve().parents[1] / "pyproject.toml")


def _command(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_and_version(script):
    command = _command(SCRIPTS[script])
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0 and "Usage:" in result.output and len(result.output) > 200
    result = CliRunner().invoke(command, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_folds_option_takes_several_values_like_nnunet(monkeypatch):
    import vfnet_cli.predict as cli

    seen = {}

    def fake_predict(source, target, dataset, preset, folds, *rest, **options):
        seen["folds"] = folds
        from vfnet.inference.predict import PredictionReport

        return PredictionReport()

    monkeypatch.setattr(cli, "predict", fake_predict)
    monkeypatch.setattr(cli, "use_trained_preset", lambda dataset, preset, network: preset)
    result = CliRunner().invoke(cli.predict_entry, ["-i", ".", "-o", "/nonexistent_out", "-f", "0", "1", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert seen["folds"] == ["0", "1", "3"]
