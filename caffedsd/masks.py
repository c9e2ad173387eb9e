"""Pruning masks: pure functions of (weights, criterion, amount) -> bool array.

True keeps a weight, False prunes it. Computing a mask never changes the
weights; ``apply_mask`` is the separate step. A ``previous`` mask is honoured
so that masks only shrink: what was pruned stays pruned.

Criteria (registry ``CRITERIA``):
  keepmax  prune exactly round(amount * n) weights (at most n - 1: an
           amount is below 1), smallest |w| first (Keepmax-Cut of the DSD
           paper); ties go to the lower flat index.
  std      prune |w| < amount * std(w) over the still-kept weights
           (Han et al. 2015); ``amount`` is that multiplier s >= 0.
  random   prune as many weights as keepmax, chosen at random
           (Random-Cut, the paper's baseline); seeded.
"""
import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import InputError
from .values import is_finite_number, is_whole

CHUNK = 1 << 22  # elements per slice when a whole-blob temporary would cost too much memory


def chunk_bounds(total, size=None):
    """(start, stop) of consecutive slices of ``size`` (default CHUNK) covering range(total)."""
    size, total = size or CHUNK, int(total)
    return ((start, min(start + size, total)) for start in range(0, total, size))


def iter_chunks(*arrays, chunk=None):
    """Aligned slices of ``chunk`` elements (default CHUNK) of the flattened
    ``arrays``: one slice per step for one array, a tuple of them for several."""
    flats = [np.asarray(a).reshape(-1) for a in arrays]
    for start, stop in chunk_bounds(flats[0].size, chunk):
        parts = tuple(flat[start:stop] for flat in flats)
        yield parts if len(parts) > 1 else parts[0]


def nonfinite_count(values, chunk=None):
    """How many of ``values`` are NaN or Inf."""
    values = np.asarray(values)
    if values.dtype.kind not in "fc":
        return 0
    return sum(int(part.size - np.count_nonzero(np.isfinite(part))) for part in iter_chunks(values, chunk=chunk))


def masked_nonzeros(weights, mask):
    """How many positions the mask prunes hold anything but 0.0."""
    return sum(int(np.count_nonzero(w[~m])) for w, m in iter_chunks(weights, mask))


def _target_count(n, sparsity, previous_pruned):
    # An amount below 1 keeps a weight: round(0.999 * 500) = 500 would have
    # emptied a layer nobody asked to empty.
    return max(min(int(round(sparsity * n)), n - 1), previous_pruned)


def _prune_lowest(scores_of, size, count, keep, chunk=None):
    """Set keep to False at the ``count`` lowest scores; ties by flat index.

    ``scores_of(start, stop)`` returns a fresh array of the scores of that flat
    range. O(n): an in-place partition of one full score array finds the
    threshold, then slices are scored again, so at most one full-size
    temporary exists besides the mask. Entries strictly below the threshold
    go, then the first ties in index order, so the result never depends on
    the partition's internal order.
    """
    flat_keep = keep.reshape(-1)
    if count <= 0:
        return
    if count >= size:
        flat_keep[:] = False
        return
    full = scores_of(0, size)
    full.partition(count - 1)
    threshold = full[count - 1]
    del full
    ties_needed = count
    for start, stop in chunk_bounds(size, chunk):
        below = scores_of(start, stop) < threshold
        flat_keep[start:stop] &= ~below
        ties_needed -= int(np.count_nonzero(below))
    for start, stop in chunk_bounds(size, chunk):
        if ties_needed <= 0:
            break
        ties = np.flatnonzero(scores_of(start, stop) == threshold)[:ties_needed]
        flat_keep[ties + start] = False
        ties_needed -= ties.size


def _inputs(weights, previous, chunk=None):
    """(weights, previous) as the criteria take them: weights as a float
    array (magnitudes of ints wrap: int8's -128; unsigned ones have no -1),
    all finite (no order puts a NaN, and Inf makes every std Inf: the mask
    would prune other than it says); ``previous`` a bool array of their
    shape or None (a 0/1 int mask's ~ is -1/-2, which indexes, not selects)."""
    weights = np.asarray(weights)
    if weights.dtype.kind != "f":
        weights = weights.astype(np.float64)
    bad = nonfinite_count(weights, chunk)
    if bad:
        raise InputError(f"weights hold {bad} NaN/Inf values (of {weights.size}): no mask can rank them by size")
    if previous is not None:
        previous = np.asarray(previous, dtype=bool)
        if previous.shape != weights.shape:
            raise InputError(f"previous mask has shape {previous.shape}, weights {weights.shape}")
    return weights, previous


def _start_keep(weights, previous):
    return np.ones(weights.shape, dtype=bool) if previous is None else previous.copy()


def _scorer(values, previous, transform=np.array):
    """scores_of for _prune_lowest: transform(values) per position (a fresh
    array), -1 where ``previous`` already pruned, so those always go first."""
    flat = values.reshape(-1)
    flat_prev = None if previous is None else previous.reshape(-1)

    def scores_of(start, stop):
        scores = transform(flat[start:stop])
        if flat_prev is not None:
            scores[~flat_prev[start:stop]] = -1
        return scores
    return scores_of


# The criteria's ``chunk`` is the elements per slice of their passes (default
# CHUNK): a bound on their temporaries' memory that no mask depends on.

def keepmax_mask(weights, sparsity, previous=None, rng=None, chunk=None):
    weights, previous = _inputs(weights, previous, chunk)
    keep = _start_keep(weights, previous)
    count = _target_count(weights.size, sparsity, zero_count(keep))
    _prune_lowest(_scorer(weights, previous, np.abs), weights.size, count, keep, chunk)
    return keep


def std_mask(weights, scale, previous=None, rng=None, chunk=None):
    weights, previous = _inputs(weights, previous, chunk)
    keep = _start_keep(weights, previous)
    count, mean = _kept_mean(weights, keep, chunk)
    if count == 0:
        return keep
    # Two passes (mean, then squared deviations) as np.std does, not the
    # sum of squares, which loses the variance when the mean is large.
    squares = 0.0
    for part, kept in iter_chunks(weights, keep, chunk=chunk):
        deviation = part[kept].astype(np.float64)
        deviation -= mean
        squares += float(np.dot(deviation, deviation))
    threshold = scale * math.sqrt(squares / count)
    largest, where, offset = -1.0, None, 0
    for part, kept in iter_chunks(weights, keep, chunk=chunk):
        magnitudes = np.where(kept, np.abs(part), -1.0)
        i = int(np.argmax(magnitudes)) if magnitudes.size else 0
        if magnitudes.size and magnitudes[i] > largest:
            largest, where = float(magnitudes[i]), offset + i
        kept &= at_least(np.abs(part), threshold)
        offset += part.size
    if not keep.any():
        # As keepmax, never a whole layer (s above max|w|/std: a recipe's
        # std prune of 2 emptied every Xavier-initialized layer): its
        # largest weight stays, the first of equals.
        keep.reshape(-1)[where] = True
    return keep


def at_least(values, threshold):
    """``values >= threshold`` as the numbers are: numpy compares float32
    (or float16) values with a Python float in their own type, so a weight a
    hair below the threshold, equal to it rounded, was kept."""
    kind = values.dtype.type
    if values.dtype.kind == "f" and values.dtype.itemsize < 8:
        with np.errstate(over="ignore"):  # past the type's range: inf, which is right
            bound = kind(threshold)
            if float(bound) < threshold:
                bound = np.nextafter(bound, kind(np.inf))
        return values >= bound
    return values >= threshold


def _kept_mean(weights, keep, chunk=None):
    """(count, float64 mean) of the weights ``keep`` keeps, by slices."""
    count, total = 0, 0.0
    for part, kept in iter_chunks(weights, keep, chunk=chunk):
        values = part[kept]
        count += values.size
        total += float(values.sum(dtype=np.float64))
    return count, total / count if count else 0.0


def random_mask(weights, sparsity, previous=None, rng=None, chunk=None):
    if rng is None:
        raise InputError("random criterion needs an rng (a numpy Generator: layer_rng)")
    weights, previous = _inputs(weights, previous, chunk)
    keep = _start_keep(weights, previous)
    count = _target_count(weights.size, sparsity, zero_count(keep))
    draws = rng.random(weights.size, dtype=np.float32)
    _prune_lowest(_scorer(draws, previous), weights.size, count, keep, chunk)
    return keep


@dataclass(frozen=True)
class Criterion:
    name: str
    compute: Callable
    # What the per-layer number means, for validation and messages.
    amount_name: str
    check: Callable  # amount -> error text or None
    seeded: bool = False  # draws from ``rng``: its masks depend on the seed


def _check_sparsity(value):
    if not (is_finite_number(value) and 0 <= value < 1):
        return "must be in [0, 1)"
    return None


def _check_scale(value):
    if not (is_finite_number(value) and value >= 0):
        return "must be a finite number >= 0 (the multiplier s)"
    return None


CRITERIA = {
    "keepmax": Criterion("keepmax", keepmax_mask, "sparsity", _check_sparsity),
    "std": Criterion("std", std_mask, "s", _check_scale),
    "random": Criterion("random", random_mask, "sparsity", _check_sparsity, seeded=True),
}
# Those whose amount is a sparsity: what a sensitivity scan sweeps.
SPARSITY_CRITERIA = tuple(name for name, criterion in CRITERIA.items() if criterion.amount_name == "sparsity")


def get_criterion(name):
    # A YAML file may give a mapping or a list here, which no dict lookup takes.
    if not isinstance(name, str) or name not in CRITERIA:
        raise InputError(f"unknown criterion {name!r} (known: {', '.join(CRITERIA)})")
    return CRITERIA[name]


def compute_mask(weights, criterion, amount, previous=None, rng=None):
    """The keep-mask of ``weights`` under ``criterion`` (a name in CRITERIA).

    ``previous`` (bool, same shape) is an earlier mask: positions it prunes
    stay pruned. ``rng`` is a numpy Generator, needed by ``random``.
    """
    crit = get_criterion(criterion)
    problem = crit.check(amount)
    if problem:
        raise InputError(f"{criterion} amount {amount!r}: {problem}")
    return crit.compute(weights, amount, previous=previous, rng=rng)


def apply_mask(weights, mask):
    """A copy of ``weights`` with pruned positions set to exactly +0.0."""
    weights, mask = np.asarray(weights), np.asarray(mask)
    if mask.shape != weights.shape:  # broadcast, [False] would zero every weight
        raise InputError(f"mask has shape {mask.shape}, weights {weights.shape}")
    return np.where(mask.astype(bool, copy=False), weights, weights.dtype.type(0))


def layer_rng(seed, layer_name):
    """A Generator for one layer that depends on the seed and the layer's name
    only, so a layer's random mask does not change when others are added."""
    if not is_whole(seed) or seed < 0:  # 1.5 drew as 1 did
        raise InputError(f"seed {seed!r}: must be a whole number >= 0")
    name_key = int.from_bytes(hashlib.sha256(layer_name.encode("utf-8")).digest()[:16], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), name_key]))


def zero_count(array):
    """Elements of ``array`` that are 0 (False), as an int: the positions a
    mask prunes, or the zeros of a weight blob."""
    return int(array.size - np.count_nonzero(array))


def sparsity(mask):
    """Fraction of positions a mask prunes (exact integer counts)."""
    mask = np.asarray(mask, dtype=bool)
    return zero_count(mask) / mask.size if mask.size else 0.0
