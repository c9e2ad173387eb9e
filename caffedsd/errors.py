"""caffedsd's exception types.

Library code raises these where it finds the fault; the CLI turns each into a
one-line message and an exit status in one place (cli.main). Messages name
the file, layer or value at fault and say what is wrong. The subclasses say
which kind of input was wrong, for callers that want to tell them apart.
"""

# What h5py raises on a damaged HDF5 file, depending on where the damage
# lies (superblock, object headers, B-trees, filters): a reader catches
# these and names the file in one line.
HDF5_DAMAGE = (OSError, KeyError, ValueError, RuntimeError, TypeError)


class CaffeDsdError(Exception):
    """Base of all errors meant for the user. ``exit_code`` is the CLI's status."""

    exit_code = 2


class InputError(CaffeDsdError):
    """A file, layer or value given by the user is wrong."""


class PlanError(InputError):
    """A pruning plan (file, --rule, --sparsity) that is not valid."""


class PlanningError(InputError):
    """Sensitivity curves that cannot meet the budget asked for."""


class RecipeError(InputError):
    """A DSD recipe that is not valid."""


class SqueezeNetError(InputError):
    """Settings that do not make a SqueezeNet."""


class FormatError(InputError):
    """A .dcz file that is truncated, corrupted or of another version."""


class WireError(InputError):
    """Bytes that are not a well-formed protobuf message."""


class CaffeUnavailable(CaffeDsdError):
    """pycaffe or the caffe binary cannot be found or used."""


class OutputError(CaffeDsdError):
    """An output that could not be written for want of room: the disk, a
    quota or a file-size limit is full (exit status 1: not the input's fault)."""

    exit_code = 1

    def __init__(self, path, reason, written=None):
        # ``written``: an output made before this one failed, which is whole.
        after = f" ({written} was written before it, whole)" if written else ""
        super().__init__(f"{path}: could not be written ({reason}); no part of it was left{after}")
        self.path, self.reason = path, reason


class Diverged(CaffeDsdError):
    """Training's loss became NaN or Inf (exit status 1). From there on the
    weights are NaN too, and Caffe would train on them for as long as asked."""

    exit_code = 1


class WorkerDied(CaffeDsdError):
    """A worker process ended without its results: killed, out of memory,
    or aborted by Caffe (exit status 1; what it finished is kept)."""

    exit_code = 1


class CheckFailed(CaffeDsdError):
    """A verification found something that does not hold (exit status 1)."""

    exit_code = 1


class CaffeDsdWarning(UserWarning):
    """What the user should know of a run that goes on (a CPU-only build
    training a GPU solver on the CPU, hooks on the host in GPU mode).
    Library code warns (warnings.warn); the CLI shows each once, as one
    line, in one place (cli._Group.invoke)."""
