"""Plain numbers: checks of values read from YAML and JSON files (plans,
recipes, run-folder records), where a number may be any Python int; the
limits of Caffe's C ints and 32-bit floats; periodic schedules.

A value built in Python may hold numpy's numbers (np.float32(0.5), a
sparsity from np.linspace): they are numbers as Python's are, and a value
keeps them as Python's own (``plain``), which YAML and JSON write."""
import math
import numbers

# Caffe's C int: blob shapes and counts, and the solver's iteration counter.
INT32_MAX = 2 ** 31 - 1
# The smallest normal and the greatest 32-bit floats. Caffe's base_lr is
# one: times a smaller scale, any base_lr up to 1 is 0 or subnormal there
# (lr_scale 1e-320 trained at lr 0, without a word); a rate past the greatest
# is inf there.
LEAST_NORMAL_FLOAT32 = 2.0 ** -126
GREATEST_FLOAT32 = (2.0 - 2.0 ** -23) * 2.0 ** 127


def is_whole(value):
    """An int, numpy's too, but not a bool (YAML's yes and no)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """An int or float, numpy's too, but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def plain(value):
    """A number ``is_real`` takes, as Python's own int or float."""
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def is_finite_number(value):
    """A number ``is_real`` takes that is finite as a float: every use
    takes it as one, and an int past float's range (10**400 written in a
    YAML file) made math.isfinite and float() raise OverflowError."""
    if not is_real(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def next_multiple(iteration, every):
    """The first multiple of ``every`` after ``iteration``: when a periodic
    test pass, snapshot or checkpoint is next due; None for every 0 (never)."""
    return (iteration // every + 1) * every if every else None
