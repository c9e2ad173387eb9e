"""The ``caffedsd`` command line: parse, make one library call, print.

Library errors (caffedsd.errors) become a one-line message and their exit
status here, in ``_Group.invoke``, and nowhere else.
"""
import errno
import inspect
import io
import os
import signal
import sys
import warnings
from pathlib import Path

import click

from . import report
from .cli_options import (NamedPath, gpu_option, json_option, masks_option, model_option, output_option, path_type,
                          python_layers_option, solver_gpu_option, solver_option, solverstate_option,
                          sparsity_options, training_options, verbose_option, weights_option)
from .cli_progress import SIGNALLED, Progress, Terminated, catch_signals, release_signals, train_with_progress
from .errors import CaffeDsdError, CaffeDsdWarning, Diverged, InputError
from .globrules import glob_list
from .masks import SPARSITY_CRITERIA


class _ExampleLast:
    """Help that ends with the command's example: the docstring's closing
    "Example(s):" paragraph goes after the options (click's epilog)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        text, marker, example = inspect.cleandoc(self.help or "").rpartition("\b\nExample")
        if marker and not self.epilog:
            self.help, self.epilog = text.rstrip(), marker + example


class _Command(_ExampleLast, click.Command):
    def invoke(self, ctx):
        if self.name != "info":
            _check_working_folder()
        return super().invoke(ctx)


def _check_working_folder():
    """Caffe takes paths as UTF-8 (protobuf strings), and caffedsd hands it
    absolute ones it makes (temporaries, snapshot folders, a recipe's
    paths): made in a folder whose name is not UTF-8, they failed late, a
    traceback after a whole training."""
    try:
        os.getcwdb().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{ascii(os.getcwd())[1:-1]}: the working folder's name is not UTF-8: Caffe takes paths as "
                         "UTF-8 and caffedsd hands it paths made from it; run caffedsd from another folder") from None
    except OSError:  # a folder removed: whatever the command does says so
        pass


# click 8.2+ shows a group's help for no command by raising this UsageError.
_HELP_FOR_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Group(_ExampleLast, click.Group):
    command_class = _Command
    group_class = type  # a subgroup (data) is a _Group too
    # Set by the `caffedsd` program (program()), not where the group runs
    # inside another process (the tests' CliRunner).
    exits_at_once = False

    def invoke(self, ctx):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("once", CaffeDsdWarning)  # the same news once a command
                warnings.showwarning = _show_warning
                try:
                    result = super().invoke(ctx)
                except (click.exceptions.Exit, CaffeDsdError):  # a subgroup's line shown; caffedsd's own
                    raise
                except Exception:
                    if not SIGNALLED:
                        raise
                    # Code that caught the signal's exception raised its own
                    # instead (matplotlib's Agg drawing a plot: "Invalid
                    # bounding box"): the command stopped for the signal.
                    raise (Terminated() if SIGNALLED[0] == signal.SIGTERM else KeyboardInterrupt()) from None
                finally:
                    # The work is over, its clean-up done: a signal while its
                    # line is printed, or Python exits, ends the process.
                    release_signals()
        except CaffeDsdError as exc:
            click.echo(f"caffedsd: {report.one_line(str(exc))}", err=True)
            if isinstance(exc, Diverged) and self.exits_at_once:
                # Caffe's max pooling over NaNs leaves its argmax at -1, and
                # its backward pass then writes before its buffer: the heap
                # of a diverged run may be damaged, and freeing Caffe's nets
                # at exit aborted the process after this line (glibc "double
                # free or corruption", exit status 134). What caffedsd writes
                # is whole or removed by now: leave without freeing anything.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exc.exit_code)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            _interrupted(ctx, isinstance(exc, Terminated))
        except _HELP_FOR_NO_ARGS:  # `caffedsd data`: the help as click shows it, not folded into one line
            raise
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            if exc.ctx is None and ctx.invoked_subcommand:  # click's parser gives no context: an option's value
                where = f"{ctx.command_path} {ctx.invoked_subcommand}"
            _usage_error(ctx, where, exc)
        except OSError as exc:
            # Path.exists() and the like raise it (only this errno) rather
            # than say False: a path given, or one made of it (a temporary
            # file's, a masks file's), with a name the file system refuses.
            if exc.errno != errno.ENAMETOOLONG:
                raise
            click.echo(f"caffedsd: {report.one_line(os.fsdecode(exc.filename or ''))}: name too long for the "
                       "file system (at most 255 bytes a name, with what caffedsd adds to it)", err=True)
            ctx.exit(InputError.exit_code)
        if SIGNALLED:  # swallowed where it was raised: the command went on to its end
            _interrupted(ctx, SIGNALLED[0] == signal.SIGTERM)
        return result

    def parse_args(self, ctx, args):
        """The group's own options (`caffedsd --bogus`), wrong in one line too."""
        try:
            return super().parse_args(ctx, args)
        except _HELP_FOR_NO_ARGS:
            raise
        except click.UsageError as exc:
            _usage_error(ctx, ctx.command_path, exc)


def _usage_error(ctx, where, exc):
    """A usage error in one line (click's own prints three), naming the
    command whose help tells the right use."""
    click.echo(f"{where}: {report.one_line(exc.format_message())} (see {where} --help)", err=True)
    ctx.exit(exc.exit_code)


def _show_warning(message, category, filename, lineno, file=None, line=None, _shown=warnings.showwarning):
    """A CaffeDsdWarning as one line; any other as Python shows it."""
    if issubclass(category, CaffeDsdWarning):
        click.echo(f"caffedsd: warning: {report.one_line(str(message))}", err=True)
    else:
        _shown(message, category, filename, lineno, file, line)


def _interrupted(ctx, terminated):
    """Ctrl-C or SIGTERM: one line, and a shell's exit status for it (click's
    own says "Aborted!" with exit status 1, a failed check's). What was being
    written is removed by now (atomic), and a run folder keeps its work."""
    if sys.stderr.isatty() and not terminated:  # past the terminal's ^C
        click.echo(err=True)
    click.echo(f"caffedsd: {'terminated (SIGTERM)' if terminated else 'interrupted'}; outputs that had "
               "finished are kept, none is half-written (dsd and sensitivity go on from there when run "
               "again)", err=True)
    ctx.exit(Terminated.exit_code if terminated else 130)


def _wrote(text):
    """A "wrote ..." line, one line even for an output named with a newline."""
    click.echo(report.one_line(text))


def _wrote_trained(output, result, lr=False):
    """A train-* command's "wrote ..." line: the masks file too, when one was written beside the output."""
    masks = f" and {result.masks}" if result.masks else ""
    at = f" at base_lr {result.base_lr:g}" if lr else ""
    _wrote(f"wrote {output}{masks} after {result.iterations} iterations{at}")
    if result.snapshots:  # Caffe would have said "Snapshotting to ..."; its log is quiet here
        model, state = result.snapshots[-1]
        count = len(result.snapshots)
        made = f"{count} solver snapshots, the last" if count > 1 else "the solver's snapshot"
        _wrote(f"wrote {made} {model} and {state}")


# -- commands --------------------------------------------------------------------

@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="caffedsd")
def main():
    """Dense-Sparse-Dense training and pruning for stock BVLC Caffe models.

    \b
    Example:
      caffedsd dsd --recipe recipes/lenet_dsd.yaml -o work/demo
    """


@main.command()
@json_option
def info(as_json):
    """Show the Caffe, pycaffe and libraries caffedsd runs on.

    \b
    Example:
      caffedsd info --json
    """
    from .caffe_env import info as gather

    data = gather()
    click.echo(report.to_json(data) if as_json else report.info_text(data))


@main.command()
@weights_option()
@model_option()
@sparsity_options
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed of the random criterion [default: the plan file's seed, else 0].")
@masks_option
@output_option()
def prune(weights, model, allow_python_layers, sparsity, rules, plan_file, criterion, seed, masks, output, force):
    """Prune blob 0 of Convolution/Deconvolution/InnerProduct layers.

    Writes OUTPUT and its masks beside it (pruned.caffemodel ->
    pruned.masks.h5). Masks of WEIGHTS, if present, only shrink.

    \b
    Example:
      caffedsd prune -w squeezenet.caffemodel -s 0.5 -r 'conv10=0' -o pruned.caffemodel
    """
    from .plan import plan_from_options
    from .pruning import prune_file

    plan = plan_from_options(sparsity, rules, plan_file, criterion, seed)
    rows, masks_out = prune_file(weights, output, plan, masks=masks, model=model,
                                 force=force, allow_python_layers=allow_python_layers, others=[plan_file])
    click.echo(report.prune_table(rows))
    _wrote(f"wrote {output} and {masks_out}")


@main.command()
@weights_option()
@masks_option
@json_option
def stats(weights, masks, as_json):
    """Per-layer shapes, parameters, non-zeros, sparsity and bytes.

    \b
    Example:
      caffedsd stats -w pruned.caffemodel --json
    """
    from .stats import weights_stats

    data = weights_stats(weights, masks)
    click.echo(report.to_json(data) if as_json else report.stats_table(data))


@main.command()
@model_option(required=True, help="The net prototxt of the weights (their layer types and order).")
@click.option("--weights", "-w", type=path_type(), required=True, help="HDF5 weights (.caffemodel.h5).")
@output_option()
def convert(model, allow_python_layers, weights, output, force):
    """Make a binary caffemodel of Caffe's HDF5 weights (what a solver with
    snapshot_format: HDF5 writes), for every other command and for any
    Caffe. Blobs shared through param { name } are written under each layer
    that uses them, as Caffe writes binary caffemodels.

    \b
    Example:
      caffedsd convert -p train_val.prototxt -w snap_iter_1000.caffemodel.h5 -o snap_iter_1000.caffemodel
    """
    from .hdf5_weights import convert_hdf5_weights

    layers, floats = convert_hdf5_weights(weights, model, output, force=force,
                                          allow_python_layers=allow_python_layers)
    _wrote(f"wrote {output}: {layers} layers with weights, {floats} floats")


@main.command()
@weights_option()
@masks_option
@model_option()
@gpu_option
def verify(weights, masks, model, allow_python_layers, gpu):
    """Check masked weights are exactly 0.0 and, with --model, that the
    stock caffe binary loads the pair, ignores no weights and runs forward.

    Exit status 0 when every check holds, 1 when one fails.

    \b
    Example:
      caffedsd verify -w pruned.caffemodel -p deploy.prototxt
    """
    from .verify import require_all, verify_weights

    checks = verify_weights(weights, masks, model, allow_python_layers=allow_python_layers, gpu=gpu)
    click.echo(report.checks_table(checks))
    require_all(checks)


@main.command("train-sparse")
@solver_option
@weights_option()
@masks_option
@solverstate_option("; its history is zeroed at masked positions first")
@training_options
@output_option()
def train_sparse(solver, weights, masks, solverstate, iterations, test_iterations, test_interval, gpu,
                 allow_python_layers, output, force):
    """Retrain a pruned model with its pruned weights held at exactly 0.0.

    Gradients are masked before every update (so momentum and Adam history
    stay 0 there) and weights re-zeroed after it; Caffe's own snapshots hold
    the zeros too. Writes OUTPUT and its masks.

    \b
    Example:
      caffedsd train-sparse --solver solvers/lenet_solver.prototxt -w pruned.caffemodel -n 1000 -o sparse.caffemodel
    """
    from .training import train_sparse as run

    result = train_with_progress("sparse", run, solver_path=solver, weights=weights, output=output, masks=masks,
                    iterations=iterations, test_iterations=test_iterations, test_interval=test_interval,
                    solverstate=solverstate, gpu=gpu, force=force, allow_python_layers=allow_python_layers)
    _wrote_trained(output, result)


@main.command("train-dense")
@solver_option
@weights_option()
@click.option("--lr-scale", type=float, default=0.1, show_default=True,
              help="Learning rate = the solver's base_lr times this (the paper: 1/10; a resumed run: the same "
                   "as before).")
@solverstate_option()
@training_options
@output_option()
def train_dense(solver, weights, lr_scale, solverstate, iterations, test_iterations, test_interval, gpu,
                allow_python_layers, output, force):
    """Re-dense phase: masks off, pruned weights restart at 0.0, survivors keep
    their values; base_lr is scaled, solver history starts fresh (or
    --solverstate's), dropout and weight decay are unchanged.

    \b
    Example:
      caffedsd train-dense --solver solvers/lenet_solver.prototxt -w sparse.caffemodel -n 1000 -o dsd.caffemodel
    """
    from .training import train_dense as run

    result = train_with_progress("dense", run, solver_path=solver, weights=weights, output=output, lr_scale=lr_scale,
                    iterations=iterations, test_iterations=test_iterations, test_interval=test_interval,
                    solverstate=solverstate, gpu=gpu, force=force, allow_python_layers=allow_python_layers)
    _wrote_trained(output, result, lr=True)


@main.command()
@click.option("--recipe", type=path_type(), required=True, help="Recipe YAML (see README).")
@solver_gpu_option
@verbose_option
@click.option("--restart-data", is_flag=True,
              help="Continuing a stage, start its data layers from their first batch, as `caffe train --snapshot` "
                   "does, instead of replaying them up to the checkpoint (faster with large LMDBs; the stage then "
                   "reads other batches than an uninterrupted run would).")
@click.option("--force", is_flag=True,
              help="Take over a run folder that another recipe made: keep the leading stages this recipe shares "
                   "with it (same solver, net and weights files, same settings), finished or under way, and "
                   "remove and run the rest anew.")
@python_layers_option
@output_option("Run folder; rerun the same command to continue an interrupted run.", folder=True, force=None)
def dsd(recipe, gpu, restart_data, force, allow_python_layers, output):
    """Run a whole Dense-Sparse-Dense recipe into a run folder.

    Each stage leaves a stock-Caffe-loadable model (and masks) and its test
    outputs, and a training stage its curve; report.md, report.json and
    curves.png sum up. Killed at any point, the same command continues from
    the last checkpoint, reading the batches an uninterrupted run would have
    read. After editing a later stage (a learning rate that diverged),
    --force keeps the stages before it.

    \b
    Example:
      caffedsd dsd --recipe recipes/lenet_dsd.yaml -o work/lenet_dsd
    """
    from .dsd import run_recipe
    from .recipe import load_recipe

    parsed = load_recipe(recipe)
    data = run_recipe(parsed, output, gpu=gpu, progress=Progress, replay=not restart_data, force=force,
                      notify=lambda line: click.echo(f"caffedsd: {line}", err=True),
                      allow_python_layers=allow_python_layers)
    click.echo(report.dsd_table(data["stages"]))
    click.echo(f"report: {output / 'report.md'}")


@main.command()
@model_option(required=True)
@weights_option()
@click.option("--layers", "-l", "layer_globs", multiple=True, metavar="GLOB",
              help="Scan only prunable layers matching GLOB (repeatable, or comma-separated).")
@click.option("--sparsities", default=",".join(f"{s:g}" for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
              show_default=True, help="Sparsities to try, increasing, each in [0, 1).")
@click.option("--criterion", "-c", type=click.Choice(SPARSITY_CRITERIA), default="keepmax", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the random criterion.")
@click.option("--iterations", "-n", type=int, default=50, show_default=True,
              help="TEST iterations per point (batches of the TEST data layer).")
@click.option("--jobs", "-j", type=int, default=1, show_default=True, help="Worker processes, each with its own Net.")
@gpu_option
@verbose_option
@click.option("--force", is_flag=True,
              help="Take over a scan folder that another scan made: keep its points if they were measured as this "
                   "scan measures (same net file, weights, TEST examples, criterion, seed and iterations; other "
                   "layers or sparsities), else remove them.")
@output_option("Scan folder; rerun the same command to continue an interrupted scan.", folder=True, force=None)
def sensitivity(model, allow_python_layers, weights, layer_globs, sparsities, criterion, seed, iterations, jobs, gpu,
                force, output):
    """Measure how each layer's pruning hurts: prune one layer at a time,
    run the TEST phase, restore it.

    Writes sensitivity.json/.csv/.md and sensitivity.png into OUTPUT. To add
    sparsities or layers to a finished scan, rerun it with them and --force:
    the points it has are not measured again.

    \b
    Example:
      caffedsd sensitivity -p train_val.prototxt -w lenet.caffemodel -n 100 -j 2 -o sens
    """
    from .sensitivity import parse_sparsities, scan

    data = scan(model, weights, output, layers=glob_list(layer_globs, "--layers"),
                sparsities=parse_sparsities(sparsities), criterion=criterion, iterations=iterations, seed=seed,
                jobs=jobs, gpu=gpu, allow_python_layers=allow_python_layers, progress=Progress, force=force,
                notify=lambda line: click.echo(f"caffedsd: {line}", err=True))
    if data["data"] == "streamed":
        click.echo("note: the TEST batches did not fit in memory and were read anew for every point, each "
                   "time checked to be the baseline's", err=True)
    click.echo(report.sensitivity_summary(data))
    _wrote(f"wrote {output}/sensitivity.json, .csv, .md and .png")


@main.command("plan")
@click.option("--sensitivity", "sens", type=NamedPath(path_type=Path), required=True,
              help="sensitivity.json (or its folder) from `caffedsd sensitivity`.")
@click.option("--max-drop", type=float, default=None,
              help="Allowed drop per layer: percentage points of an accuracy (0.5 = half a point), "
                   "or loss units for a loss metric.")
@click.option("--target-sparsity", type=float, default=None,
              help="Sparsity over all prunable weights to reach with the smallest predicted drop.")
@click.option("--max-total-drop", type=float, default=None,
              help="Allowed drop of the whole pruned net, as measured by --verify (same units as --max-drop).")
@click.option("--verify", is_flag=True,
              help="Measure the whole pruned net on the scan's net and weights (TEST phase); with "
                   "--max-total-drop, back off sparsity until the measured drop is within it.")
@click.option("--iterations", "-n", type=int, default=None,
              help="TEST iterations per measurement with --verify (default: the scan's).")
@click.option("--metric", default=None, help="Output to judge by (default: the scan's, the last top-1 accuracy).")
@click.option("--model", "-p", type=path_type(), default=None,
              help="With --verify: the scan's net prototxt, if not where the scan recorded it.")
@python_layers_option
@weights_option(required=False)
@gpu_option
@verbose_option
@output_option("Plan YAML to write.")
def plan_command(sens, max_drop, target_sparsity, max_total_drop, verify, iterations, metric, model,
                 allow_python_layers, weights, gpu, force, output):
    """Choose each layer's sparsity from a sensitivity scan.

    With --max-drop alone: per layer, the highest measured sparsity within
    the budget. With --target-sparsity: that overall sparsity at the
    smallest predicted drop (per-layer drops added up; the least of every
    choice of measured points), each layer within --max-drop if given. With
    --weights, the scan must be of that model.

    Adding per-layer drops is optimistic. --verify builds the scan's net
    with its weights and measures the whole pruned net; with
    --max-total-drop X it backs off (bisecting a path that steps the layer
    costing most per unit of its sparsity first) until the measured drop is
    within X, and writes the measured drop into the plan. --max-total-drop alone starts from each
    layer's highest sparsity within X.

    \b
    Examples:
      caffedsd plan --sensitivity sens/sensitivity.json --max-drop 0.5 -o plan.yaml
      caffedsd plan --sensitivity sens/sensitivity.json --max-total-drop 1 --verify -o plan.yaml
    """
    from .plan_from_scan import make_plan
    result = make_plan(sens, output, max_drop=max_drop, target=target_sparsity, metric=metric,
                       weights=weights, force=force, verify=verify, max_total_drop=max_total_drop,
                       iterations=iterations, model=model, gpu=gpu, allow_python_layers=allow_python_layers)
    click.echo(report.plan_table(result))
    click.echo(report.plan_summary(result))
    _wrote(f"wrote {output}")


@main.command()
@click.option("--version", "net_version", type=click.Choice(["1.0", "1.1"]), default="1.0", show_default=True)
@click.option("--bypass", type=click.Choice(["none", "simple", "complex"]), default="none", show_default=True)
@click.option("--base-e", type=int, default=128, show_default=True, help="Expand filters of the first Fire module.")
@click.option("--incr-e", type=int, default=128, show_default=True, help="Expand filters added every FREQ modules.")
@click.option("--freq", type=int, default=2, show_default=True)
@click.option("--pct3x3", type=float, default=0.5, show_default=True, help="Share of 3x3 among expand filters.")
@click.option("--sr", type=float, default=0.125, show_default=True, help="Squeeze ratio.")
@click.option("--num-classes", type=int, default=1000, show_default=True)
@click.option("--input-size", type=int, default=227, show_default=True)
@click.option("--channels", type=int, default=3, show_default=True,
              help="Input channels; 3 subtracts ImageNet's mean pixel in the Data layers, others nothing.")
@click.option("--scale", type=float, default=None,
              help="Data layers' transform_param scale: 0.00390625 for LMDBs of 0-255 pixels that no mean "
                   "centres (Caffe's MNIST nets), which train poorly or diverge as they are.")
@click.option("--stem", type=click.Choice(["standard", "small"]), default="standard", show_default=True,
              help="small: a 3x3 stride-1 conv1 for small inputs such as 28x28.")
@click.option("--weight-filler", type=click.Choice(["xavier", "msra"]), default="xavier", show_default=True,
              help="Convolution weight init: the release's xavier, or msra (He), which small variants need.")
@click.option("--data", type=click.Choice(["lmdb", "hdf5"]), default="lmdb", show_default=True)
@click.option("--train-source", default=None, help="Training data (LMDB folder or HDF5 list file).")
@click.option("--test-source", default=None, help="Test data (LMDB folder or HDF5 list file).")
@click.option("--bias-lr2", is_flag=True,
              help="Give every conv param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } "
                   "(BVLC's reference-net convention; the release has none).")
@click.option("--mirror", is_flag=True, help="Random horizontal flips in the TRAIN Data layer.")
@click.option("--split-phases", is_flag=True,
              help="Loss in TRAIN only, accuracies in TEST only (v1.0's release does; v1.1's leaves both).")
@click.option("--solver-mode", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="solver_mode of solver.prototxt (the release's is GPU).")
@click.option("--sweep", is_flag=True,
              help="Print parameters and size over the grid of the KNOB=V1,V2,... arguments instead of writing files.")
@click.argument("knobs", nargs=-1, metavar="[KNOB=V1,V2,...]...")
@output_option("Folder for train_val.prototxt, deploy.prototxt and solver.prototxt.", folder=True, required=False,
               force_help="Replace files in the folder that hold other contents (a net edited by hand).")
def squeezenet(net_version, bypass, base_e, incr_e, freq, pct3x3, sr, num_classes, input_size, channels, scale, stem,
               weight_filler, data, train_source, test_source, bias_lr2, mirror, split_phases, solver_mode, sweep,
               knobs, output, force):
    """Generate SqueezeNet nets: v1.0 (the default) and v1.1 exactly as
    released (train_val, deploy and solver), bypass variants and the
    paper's design-space knobs.

    \b
    Examples:
      caffedsd squeezenet -o nets/squeezenet_v1.0
      caffedsd squeezenet --sweep sr=0.125,0.25,0.5,0.75,1.0 pct3x3=0.01,0.25,0.5,0.75,0.99
    """
    from .squeezenet import SqueezeNetSpec, parse_sweep, sweep_rows, write_squeezenet

    sources = {}
    if train_source is not None:
        sources["train_source"] = train_source
    if test_source is not None:
        sources["test_source"] = test_source
    spec = SqueezeNetSpec(version=net_version, bypass=bypass, base_e=base_e, incr_e=incr_e, freq=freq,
                          pct3x3=pct3x3, sr=sr, num_classes=num_classes, input_size=input_size,
                          channels=channels, stem=stem, weight_filler=weight_filler, data=data,
                          bias_lr2=bias_lr2, mirror=mirror, split_phases=split_phases, solver_mode=solver_mode,
                          scale=scale, **sources)
    if knobs and not sweep:
        raise InputError(f"{knobs[0]}: KNOB=VALUES arguments go with --sweep")
    if sweep and output is not None:
        raise InputError(f"-o {output}: --sweep prints a table and writes no files; leave out -o")
    if sweep:
        if not knobs:
            raise InputError("--sweep needs KNOB=V1,V2,... arguments, e.g. sr=0.125,0.25")
        grid = parse_sweep(knobs)
        rows = sweep_rows(spec, grid)
    elif output is None:
        raise InputError("give -o DIR to write the nets, or --sweep to print a table")
    if sweep:
        click.echo(report.sweep_table(grid, rows))
        return
    for path in write_squeezenet(spec, output, force):
        _wrote(f"wrote {path}")
    click.echo(f"{spec.name()}: {spec.parameters()} parameters ({spec.parameters() * 4 / 2 ** 20:.2f} MB)")


@main.command("train-lowrank")
@solver_option
@weights_option(required=False)
@masks_option
@click.option("--force-decay", type=float, required=True, help="Force coefficient (the paper's force_decay).")
@click.option("--force-type", default="degradation", show_default=True,
              help="degradation (the paper's L2-norm force) or constant (L1-norm force).")
@click.option("--force-mult", "mults", multiple=True, metavar="GLOB=MULT",
              help="Per-layer multiplier of --force-decay, e.g. 'ip1=0' (repeatable; last match wins; default 1).")
@click.option("--decay-type", default="fixed", show_default=True,
              help="fixed, or adaptive: scale the force to the norm of the error gradient.")
@solverstate_option()
@training_options
@output_option(force="force_write")
def train_lowrank(solver, weights, masks, force_decay, force_type, mults, decay_type, solverstate, iterations,
                  test_iterations, test_interval, gpu, allow_python_layers, force_write, output):
    """Train with force regularization, which pulls each layer's filters
    into a lower-rank space for `decompose` (Wen et al., ICCV 2017): the
    driver adds the force between the filters to the gradients, on stock Caffe.

    \b
    Example:
      caffedsd train-lowrank --solver solvers/lenet_solver.prototxt --force-decay 0.001 -o lowrank.caffemodel
    """
    from .force import ForceSpec, parse_mults
    from .training import train_lowrank as run

    spec = ForceSpec(force_decay, force_type, decay_type, parse_mults(mults))
    result = train_with_progress("lowrank", run, solver_path=solver, output=output, force=spec, weights=weights,
                    masks=masks, iterations=iterations, test_iterations=test_iterations, test_interval=test_interval,
                    solverstate=solverstate, gpu=gpu, force_write=force_write, allow_python_layers=allow_python_layers)
    _wrote_trained(output, result)


@main.command()
@model_option(required=True, help="train_val prototxt of the weights.")
@click.option("--deploy", type=path_type(), default=None, help="Deploy prototxt to rewrite too.")
@weights_option()
@click.option("--energy", type=float, default=None, help="Keep this share of the squared singular values.")
@click.option("--rank", "ranks", multiple=True, metavar="LAYER=R", help="A layer's rank (repeatable).")
@click.option("--layers", "-l", "layer_globs", multiple=True, metavar="GLOB",
              help="Decompose only the layers matching GLOB (repeatable, or comma-separated).")
@click.option("--fc", is_flag=True, help="Decompose InnerProduct layers too.")
@output_option("Folder for the rewritten prototxts, model.caffemodel and report.md.", folder=True)
def decompose(model, deploy, weights, energy, ranks, layer_globs, fc, allow_python_layers, force, output):
    """Split trained Convolution (and with --fc InnerProduct) layers into a
    rank-r layer and a 1x1 layer carrying the bias, by SVD (per group for
    grouped convolutions). A layer is split only where that makes it
    smaller in weights and multiply-adds, unless --rank names it. The
    prototxts are written under the names they were given.

    \b
    Example:
      caffedsd decompose -p train_val.prototxt --deploy deploy.prototxt -w lowrank.caffemodel --energy 0.95 -o lowrank
    """
    from .lowrank import parse_ranks, write_decomposition

    rows, skipped, written = write_decomposition(
        model, deploy, weights, output, energy=energy, ranks=parse_ranks(ranks),
        layers=glob_list(layer_globs, "--layers"), include_fc=fc, allow_python_layers=allow_python_layers,
        force=force)
    if rows:
        click.echo(report.decomposition_table(rows))
    else:
        click.echo("no layer decomposed")  # the lines below say why
    for line in report.skipped_lines(skipped):
        click.echo(f"left as is: {line}")
    _wrote(f"wrote {output}/{', '.join(written)}")


@main.command()
@weights_option()
@click.option("--energy", default="0.9,0.95,0.99", show_default=True, help="Energy levels, comma-separated.")
def rank(weights, energy):
    """Each Convolution/InnerProduct layer's rank at the given energy levels
    (per group for grouped convolutions).

    \b
    Example:
      caffedsd rank -w lenet.caffemodel --energy 0.9,0.95,0.99
    """
    from .lowrank import energy_levels, weights_rank_table

    levels = energy_levels(energy)
    click.echo(report.rank_table(levels, weights_rank_table(weights, levels)))


@main.command()
@weights_option()
@masks_option
@click.option("--bits", default="conv=8,fc=5", show_default=True,
              help="Bits of the shared-weight codes: N, or conv=N,fc=M (1..16).")
@click.option("--index-bits", default="auto", show_default=True,
              help="Width of the relative sparse indices: auto (per layer, the smallest estimated size), N or "
                   "conv=N,fc=M (padding entries fill larger gaps).")
@output_option("The .dcz file to write.")
def compress(weights, masks, bits, index_bits, force, output):
    """Deep Compression storage: sparse relative indices, k-means weight
    sharing, Huffman coding; other blobs exact. Prints the paper's per-stage
    table: bits per kept weight before and after Huffman coding, bytes after
    pruning and quantization (P+Q) and after Huffman coding (P+Q+H).

    \b
    Example:
      caffedsd compress -w sparse.caffemodel --bits conv=8,fc=5 -o model.dcz
    """
    from .dcz import compress as run, parse_bits

    rows, container = run(weights, output, parse_bits(bits), parse_bits(index_bits, "--index-bits", auto=True),
                          masks=masks, force=force)
    click.echo(report.compression_table(rows))
    _wrote(f"wrote {output}: {output.stat().st_size} bytes ({container} of them header and checksum); "
           f"{Path(weights).stat().st_size / output.stat().st_size:.2f}x smaller than {weights}")


@main.command()
@click.argument("dcz", type=path_type())
@model_option()
@output_option("The .caffemodel to write.")
def decompress(dcz, model, allow_python_layers, force, output):
    """Decode a .dcz file back into a caffemodel stock Caffe loads (weights
    equal the quantized values).

    \b
    Example:
      caffedsd decompress model.dcz -p deploy.prototxt -o model.caffemodel
    """
    from .dcz import decompress as run

    layers = run(dcz, output, model=model, force=force, allow_python_layers=allow_python_layers)
    _wrote(f"wrote {output}: {layers} layers with weights")


@main.command("train-quantized")
@solver_option
@weights_option()
@masks_option
@click.option("--bits", default="conv=8,fc=5", show_default=True, help="Bits of the shared-weight codes.")
@training_options
@output_option()
def train_quantized(solver, weights, masks, bits, iterations, test_iterations, test_interval, gpu, allow_python_layers,
                    output, force):
    """Trained quantization: share each layer's kept weights among 2^bits
    centroids (k-means) and fine-tune the centroids with the summed
    gradients of their weights; pruned weights stay 0.0.

    \b
    Example:
      caffedsd train-quantized --solver solvers/lenet_solver.prototxt -w sparse.caffemodel --bits conv=8,fc=5 -n 500 -o quantized.caffemodel
    """
    from .dcz import parse_bits
    from .training import train_quantized as run

    parsed = parse_bits(bits)
    result = train_with_progress("quantized", run, solver_path=solver, weights=weights, output=output, bits=parsed,
                    masks=masks, iterations=iterations, test_iterations=test_iterations, test_interval=test_interval,
                    gpu=gpu, force=force, allow_python_layers=allow_python_layers)
    _wrote_trained(output, result)


@main.group()
def data():
    """Prepare data sets for Caffe.

    \b
    Example:
      caffedsd data fashion-mnist -o data/fashion-mnist
    """


@data.command("fashion-mnist")
@output_option("Folder for train.h5, test.h5 and their list files.", folder=True,
               force_help="Replace files in the folder that hold other contents.")
@click.option("--source", type=NamedPath(file_okay=False, path_type=Path), default=None,
              help="Folder of the IDX .gz files (default: $CAFFEDSD_FASHION_MNIST, else Debian's "
                   "dataset-fashion-mnist).")
@click.option("--train-limit", type=int, default=None, help="Keep only the first N training images.")
@click.option("--test-limit", type=int, default=None, help="Keep only the first N test images.")
def fashion_mnist(output, source, train_limit, test_limit, force):
    """Fashion-MNIST as HDF5 for Caffe's HDF5Data layer.

    Files already in the folder as they would be written are kept; files
    with other contents (other limits, say) are replaced only with --force.

    \b
    Example:
      caffedsd data fashion-mnist -o data/fashion-mnist
    """
    from .datasets import convert_fashion_mnist

    result = convert_fashion_mnist(output, source, train_limit, test_limit, force)
    for split in ("train", "test"):
        made = result[split]
        click.echo(f"{split}: {made['count']} images -> {made['h5']} (list {made['list']})"
                   + (", already there" if made["unchanged"] else ""))


def program(**kwargs):
    """The `caffedsd` program (caffedsd.__main__ calls it once this module
    is imported): click's main, leaving at once after a divergence (see
    _Group.invoke), and ending on SIGTERM as on Ctrl-C."""
    main.exits_at_once = True
    # A name the locale's encoding lacks (a TEST output 精度 under Latin-1)
    # is printed escaped, where it raised after the work was done.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    catch_signals()
    return main(**kwargs)
