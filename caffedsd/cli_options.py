"""The options the commands of cli.py share."""
from pathlib import Path

import click

from . import report
from .masks import CRITERIA


class NamedPath(click.Path):
    """A path that is not empty: Path("") is the current folder, so -o ''
    (an unset shell variable) would write there, and -w '' was read as '.'."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            what = "file" if not self.dir_okay else "folder" if not self.file_okay else "file or folder"
            self.fail(f"an empty path; name the {what}", param, ctx)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # bytes the file system gave that are not UTF-8 (surrogateescape)
                self.fail(f"{report.one_line(ascii(value)[1:-1])} is not a UTF-8 name: Caffe takes paths as UTF-8 "
                          "(protobuf strings) and could not read or write it; rename it", param, ctx)
        return super().convert(value, param, ctx)


def path_type(**kwargs):
    return NamedPath(dir_okay=False, path_type=Path, **kwargs)


def weights_option(required=True):
    return click.option("--weights", "-w", type=path_type(), required=required, help="The .caffemodel file.")


def masks_option(func):
    return click.option("--masks", "-m", type=path_type(), default=None,
                        help="Masks file (default: WEIGHTS with .masks.h5 for .caffemodel).")(func)


def solverstate_option(extra=""):
    return click.option("--solverstate", type=path_type(), default=None,
                        help=f"Resume from this .solverstate (with -w its snapshot's caffemodel){extra}; the data "
                             "layers start from their first batch.")


def python_layers_option(func):
    return click.option("--allow-python-layers", is_flag=True,
                        help="Accept nets with Python layers (they run arbitrary code).")(func)


def model_option(required=False, help="Net prototxt that must fit the weights."):
    def decorate(func):
        return click.option("--model", "-p", type=path_type(), required=required, help=help)(python_layers_option(func))
    return decorate


class GpuId(click.IntRange):
    """One GPU's ID. `caffe train -gpu 0,1` (or all) trains on several
    through Caffe's NCCL solvers, which caffedsd does not drive: such a
    value is told so, not called an invalid integer range."""

    def __init__(self):
        super().__init__(min=0)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and ("," in value or value.strip().lower() == "all"):
            self.fail(f"{value!r}: caffedsd trains on one GPU; give one ID (training on several, as "
                      "`caffe train -gpu 0,1` does through NCCL, is not supported)", param, ctx)
        return super().convert(value, param, ctx)


def gpu_option(func, default="CPU"):
    return click.option("--gpu", type=GpuId(), default=None, metavar="ID",
                        help=f"Run Caffe on GPU ID (default: {default}).")(func)


def solver_gpu_option(func):
    return gpu_option(func, default="the solver's solver_mode and device_id, as caffe train does")


def verbose_option(func):
    """--verbose sets Caffe's log level as it is parsed, before pycaffe loads."""
    from .caffe_env import caffe_log

    return click.option("--verbose", "-v", is_flag=True, expose_value=False, help="Show Caffe's own log.",
                        callback=lambda ctx, param, value: caffe_log(value))(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def output_option(help="Output .caffemodel.", folder=False, required=True, force="force",
                  force_help="Allow overwriting an input file."):
    """-o, and --force (as parameter ``force``; None: no --force) to allow
    overwriting an input."""
    def decorate(func):
        if force:
            func = click.option("--force", force, is_flag=True, help=force_help)(func)
        kind = NamedPath(file_okay=False, path_type=Path) if folder else NamedPath(dir_okay=False, path_type=Path)
        return click.option("--output", "-o", type=kind, required=required, help=help)(func)
    return decorate


def solver_option(func):
    return click.option("--solver", type=path_type(), required=True,
                        help="Solver prototxt (net and data paths as for caffe train).")(func)


def training_options(func):
    """--iterations, --test-iterations, --test-interval, --gpu, --verbose and --allow-python-layers."""
    func = python_layers_option(verbose_option(func))
    func = click.option("--iterations", "-n", type=int, default=None,
                        help="Iterations to train (default: up to the solver's max_iter, from the iteration "
                             "of the --solverstate given, in the commands that take one).")(func)
    func = click.option("--test-iterations", type=click.IntRange(min=1), default=None, metavar="N",
                        help="TEST batches of each test net per pass (default: the solver's test_iter).")(func)
    func = click.option("--test-interval", type=click.IntRange(min=0), default=None, metavar="N",
                        help="A TEST pass every N iterations while training, and one at the end (default: the "
                             "solver's test_interval; 0: only at the end).")(func)
    return solver_gpu_option(func)


def sparsity_options(func):
    func = click.option("--criterion", "-c", type=click.Choice(list(CRITERIA)), default=None,
                        help="keepmax (default): smallest |w| first; std: |w| < s*std(w); random: seeded "
                             "Random-Cut.")(func)
    func = click.option("--plan", "plan_file", type=path_type(), default=None,
                        help="YAML plan file (see README).")(func)
    func = click.option("--rule", "-r", "rules", multiple=True, metavar="GLOB=AMOUNT",
                        help="Per-layer amount, e.g. 'conv1=0.3' or 'fire*/expand3x3=0.7'; repeatable; last match "
                             "wins.")(func)
    return click.option("--sparsity", "-s", type=float, default=None,
                        help="Amount for every prunable layer no rule names (a fraction in [0, 1); "
                             "with --criterion std, the multiplier s).")(func)
