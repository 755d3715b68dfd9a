"""Every installed command answers --help and --version."""

from __future__ import annotations

import importlib
from pathlib import Path

import click
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
        from vfnet.prediction.predict import PredictionReport

        return PredictionReport()

    monkeypatch.setattr(cli, "predict", fake_predict)
    monkeypatch.setattr(cli, "use_trained_preset", lambda dataset, preset, network: preset)
    result = CliRunner().invoke(cli.predict_entry, ["-i", ".", "-o", "/nonexistent_out", "-f", "0", "1", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert seen["folds"] == ["0", "1", "3"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_option_has_help(script):
    command = _command(SCRIPTS[script])
    missing = [param.opts[0] for param in command.params
               if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert not missing, f"{script}: options without help: {missing}"


# long names that mean the same thing under one short flag
SAME_MEANING = {"--fold": "--folds", "--images": "--input"}


def test_short_flags_mean_one_thing_across_commands():
    meanings: dict[str, set[str]] = {}
    for target in SCRIPTS.values():
        for param in _command(target).params:
            if isinstance(param, click.Option) and not param.hidden:
                for flag in param.opts + param.secondary_opts:
                    if not flag.startswith("--"):
                        long = next((o for o in param.opts if o.startswith("--")), param.opts[-1])
                        meanings.setdefault(flag, set()).add(SAME_MEANING.get(long, long))
    assert {flag: names for flag, names in meanings.items() if len(names) > 1} == {}


def test_output_flag_is_always_a_path_and_folds_always_units():
    from vfnet_cli.convert import extract_organs_entry
    from vfnet_cli.plan import plan_and_preprocess_entry

    assert "-o" not in {o for p in extract_organs_entry.params for o in p.opts if not getattr(p, "hidden", False)}
    assert "--num-folds" in next(p for p in plan_and_preprocess_entry.params if p.name == "folds").opts
