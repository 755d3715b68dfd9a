"""What every command shares: --version, -d, and printing user errors without a traceback."""

from __future__ import annotations

import functools
import logging
import shlex
import sys

import click

from vfnet import __version__
from vfnet.errors import VfnetError, disk_full_message

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Command(click.Command):
    """A click command whose repeatable ``-f/--folds`` (or ``-i/--input``) option also takes several values,
    nnU-Net style.

    ``-f 0 1 2`` is read as ``-f 0 -f 1 -f 2`` (click itself gives an option one value).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["vfnet_args"] = list(args)  # to write the corrected command into error messages
        multi_value = {name for param in self.params if isinstance(param, click.Option) and param.multiple
                       for name in param.opts if name in ("-f", "--folds", "-i", "--input")}
        expanded, current = [], None
        for token in args:
            if token in multi_value:
                current = token
            elif current and not token.startswith("-") and expanded and expanded[-1] != current:
                expanded.append(current)
            elif token.startswith("-"):
                current = None
            expanded.append(token)
        return super().parse_args(ctx, expanded)


def _configure_logging() -> None:
    """The library logs (``logging.getLogger(__name__)``); a command shows its INFO and above on stderr."""
    root = logging.getLogger("vfnet")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("vfnet: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def command(func):
    """Turn ``func`` into a click command with ``--version``; a VfnetError or a full disk exits 2 with one sentence."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _configure_logging()
        try:
            return func(*args, **kwargs)
        except VfnetError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            message = disk_full_message(exc)
            if message is None:
                raise
            click.echo(f"Error: {message}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    # vfnet_predict's entry is predict_entry: the command's name is the script's, for messages
    name = "vfnet_" + func.__name__.removesuffix("_entry")
    return click.version_option(__version__, "--version", prog_name="vfnet")(
        click.command(name=name, cls=_Command, context_settings=CONTEXT, help=func.__doc__)(wrapper)
    )


def command_line_with(option: str, value: str) -> str:
    """The command being run, as typed, with ``option value`` replacing any ``option`` given.

    Used by errors that know the command that would work (e.g. with ``--preset quick``).
    """
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return f"{option} {value}"
    args, kept, skip = ctx.meta.get("vfnet_args", []), [], False
    for token in args:
        if skip:
            skip = False
        elif token == option:
            skip = True
        elif not token.startswith(f"{option}="):
            kept.append(shlex.quote(token))
    return " ".join([ctx.command_path, *kept, option, value])


def use_trained_preset(dataset: str | int | None, preset: str | None, network_prefix: str = "2d") -> str:
    """The preset a command works on: ``--preset`` when trained, else the dataset's only trained preset.

    Raises:
        PresetNotFoundError: with the presets that are trained and the command line that would work.
    """
    from vfnet import paths
    from vfnet.errors import DatasetNotFoundError, PresetNotFoundError

    try:
        results = paths.results_dataset(dataset)
    except DatasetNotFoundError:
        for root in (paths.preprocessed_root(), paths.raw_root()):  # known, but nothing trained yet
            try:
                name = paths.resolve_dataset(dataset, root)
            except DatasetNotFoundError:
                continue
            raise PresetNotFoundError(f"nothing is trained for {name} yet; train it with: vfnet_train_all -d {name} "
                                      f"--preset {preset or 'quick'}") from None
        raise
    try:
        return paths.resolve_preset(results, preset, network_prefix)
    except PresetNotFoundError as exc:
        if not exc.presets:
            raise
        raise PresetNotFoundError(f"{exc}; run: {command_line_with('--preset', exc.presets[0])}",
                                  exc.presets) from None


dataset_option = click.option(
    "-d", "--dataset", default=None,
    help="Dataset id or name: 4, Task04 or Task04_Hippocampus. May be left out when only one exists.")
class PresetType(click.ParamType):
    """quick, default, paper or budget<N> (a budget of N wall minutes on this device)."""

    name = "PRESET"

    def convert(self, value, param, ctx):
        from vfnet.errors import PlanError
        from vfnet.experiment_planning.plans import check_preset

        try:
            return check_preset(str(value))
        except PlanError as exc:
            self.fail(str(exc), param, ctx)


preset_option = click.option(
    "--preset", type=PresetType(), default="default", show_default=True,
    help="Training schedule: quick (= a 60-minute budget on this device), budget<N> (N minutes, as "
         "--budget N trains it), default, or paper (the paper's GPU schedule).")
budget_option = click.option(
    "--budget", type=float, default=None, metavar="MINUTES",
    help="Plan the schedule from a wall-time budget on this device (calibrated in seconds): every unit of "
         "the plan, fusion sets, VFNs and crossval fit in MINUTES. Results go to preset budget<MINUTES>; "
         "--preset quick is --budget 60 in its own folder.")


def resolve_preset(preset: str, budget: float | None) -> str:
    """``--budget N`` names the preset ``budgetN``; combined with another preset than the default it is an error."""
    if budget is None:
        return preset
    from vfnet.experiment_planning.plans import budget_preset

    if preset not in ("default", budget_preset(budget)):
        raise click.UsageError(f"--budget {budget:g} and --preset {preset} contradict each other; give one")
    return budget_preset(budget)
trained_preset_option = click.option(
    "--preset", type=PresetType(), default=None,
    help="Trained preset whose models to use (quick, default, paper, budget<N>). Default: the dataset's only "
         "trained (or installed) preset; with several, name one.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
processes_option = click.option("-np", "--num-processes", type=int, default=2, show_default=True,
                                 help="Worker processes for reading and preprocessing.")
