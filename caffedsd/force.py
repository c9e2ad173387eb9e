"""Force regularization (Wen et al., ICCV 2017), computed in the driver.

The weight blob of a Convolution or InnerProduct is N filters (its rows; a
``transpose: true`` InnerProduct's columns). A convolution with ``group: g``
is g sets of N/g filters, forced each within its set, as decompose splits
it group by group; a set of one filter (depthwise) has no force. Each filter is
a particle on the unit sphere, n_i = w_i / |w_i|, pulled towards the others
along the sphere's tangent at n_i, so the filters coordinate into a
lower-rank space. The gradient added to filter i is the gradient of an
energy E over all pairs i < j, taken through the normalization:

  degradation (the paper's L2-norm force):  E = 1/2 sum |n_i - n_j|^2
      the pull of j on i, n_j - n_i, weakens as the filters get closer;
  constant (the paper's L1-norm force):     E = sum |n_i - n_j|
      the pull, (n_j - n_i) / |n_j - n_i|, is a unit vector at any distance.

dE/dw_i = (I - n_i n_i^T) dE/dn_i / |w_i|, vectorized over all pairs with
the N x N Gram matrix of the normalized filters. Filters whose norm is
below ``eps`` take no part. Caffe's solver then moves weights against the
gradient, that is along the force.
"""
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .globrules import GlobRules
from .hooks import ORDER_FORCE, Hook
from .lowrank import DECOMPOSABLE, blocks
from .values import is_finite_number

FORCE_TYPES = ("degradation", "constant")
FORCED_TYPES = DECOMPOSABLE  # force regularization readies layers for decompose
DECAY_TYPES = ("fixed", "adaptive")


def _normalized(weights, eps):
    rows = np.asarray(weights, dtype=np.float64).reshape(weights.shape[0], -1)
    norms = np.linalg.norm(rows, axis=1)
    live = norms > eps
    unit = np.zeros_like(rows)
    unit[live] = rows[live] / norms[live, None]
    return rows, norms, live, unit


def energy(weights, force_type, eps=1e-8):
    """The energy whose gradient ``force_gradient`` is (for tests and plots)."""
    _, _, live, unit = _normalized(weights, eps)
    n = unit[live]
    diff = n[:, None, :] - n[None, :, :]
    dist2 = np.einsum("ijk,ijk->ij", diff, diff)
    upper = np.triu(np.ones(dist2.shape, dtype=bool), 1)
    if force_type == "degradation":
        return 0.5 * dist2[upper].sum()
    return np.sqrt(np.maximum(dist2[upper], 0)).sum()


# The force is computed over column blocks of at most this many float64
# elements (32 MiB), so its temporaries stay near that size plus N x N
# matrices: holding whole float64 copies, VGG16's fc6 (4096 x 25088, 392
# MiB) took about 4.7 GB more memory per step, on the host or the GPU.
_BLOCK_ELEMENTS = 1 << 22


def force_gradient(weights, force_type="degradation", eps=1e-8, xp=np, dtype=None, block_elements=_BLOCK_ELEMENTS,
                   add_to=None, alpha=1.0):
    """dE/dW, shaped like ``weights``, in ``dtype`` (default float64). The
    force is its negative. With ``add_to`` (an array of the weights' size),
    ``alpha`` dE/dW is added into it block by block instead, and it is
    returned: no array of the whole result is made.

    ``xp`` is the array module (numpy, or CuPy for weights on the GPU): the
    computation is written without host synchronization, so on the device
    the Gram products stay there. It runs in float64 over blocks of columns
    (``block_elements`` each): three passes over the weights (norms; the
    sum or the Gram matrix of the unit filters; the result), never a whole
    float64 copy of them."""
    if force_type not in FORCE_TYPES:
        raise InputError(f"force type {force_type!r}: must be one of {', '.join(FORCE_TYPES)}")
    f64 = xp.float64
    rows = weights.reshape(weights.shape[0], -1)
    count, width = rows.shape
    step = max(1, block_elements // max(1, count))
    blocks = [slice(first, min(first + step, width)) for first in range(0, width, step)]
    squares = xp.zeros(count, dtype=f64)
    for block in blocks:
        columns = rows[:, block].astype(f64)
        squares += xp.sum(columns * columns, axis=1)
    norms = xp.sqrt(squares)
    live = norms > eps
    inverse = xp.where(live, 1.0 / xp.where(live, norms, 1.0), 0.0)[:, None]  # dead filters: 0, left out

    def unit(block):  # the unit filters' columns in ``block`` (dead ones 0)
        return rows[:, block].astype(f64) * inverse

    # dE/dn_i = scale_i n_i - pull_i; its tangent part (all that moves n_i
    # on the sphere) is (scale_i - radial_i) n_i - pull_i, with
    # radial_i = dE/dn_i . n_i; dE/dw_i = tangent / |w_i|.
    if force_type == "degradation":
        # dE/dn_i = sum_j (n_i - n_j) = m n_i - s, s = sum_j n_j
        m = live.sum()
        sums, radial = [], xp.zeros(count, dtype=f64)
        for block in blocks:
            n = unit(block)
            sums.append(n.sum(axis=0))
            radial -= n @ sums[-1]
        scale, radial = m, radial + m  # m |n_i|^2 - n_i . s

        def pull(block, index):
            return sums[index][None, :]
    else:
        # dE/dn_i = sum_j (n_i - n_j) / |n_i - n_j| = a_i n_i - (P n)_i,
        # P_ij = 1 / |n_i - n_j| over distinct live pairs, a_i = sum_j P_ij
        gram = xp.zeros((count, count), dtype=f64)
        for block in blocks:
            n = unit(block)
            gram += n @ n.T
        dist = xp.sqrt(xp.maximum(2.0 - 2.0 * gram, 0.0))
        # The diagonal must go by name: n_i . n_i rounds to 1 - 1e-16 for some
        # filters, which puts 1 / 1.5e-8 on it, and that self-term spoiled
        # the result in its ninth digit (it cancels only in exact arithmetic).
        pair = (dist > 1e-12) & live[:, None] & live[None, :] & ~xp.eye(count, dtype=bool)
        weight = xp.where(pair, 1.0 / xp.where(pair, dist, 1.0), 0.0)
        del dist, pair
        scale = weight.sum(axis=1)
        radial = scale - xp.sum(weight * gram, axis=1)  # a_i |n_i|^2 - sum_j P_ij n_j . n_i
        del gram
        scale = scale[:, None]

        def pull(block, index):
            return weight @ unit(block)
    if add_to is None:
        result = xp.empty((count, width), dtype=f64 if dtype is None else dtype)
    else:  # a view: the caller's array is written (as is, where a reshape could copy a transposed view)
        result = add_to if add_to.shape == (count, width) else add_to.reshape(count, width)
    for index, block in enumerate(blocks):
        n = unit(block)
        gradient = ((scale - radial[:, None]) * n - pull(block, index)) * inverse
        if add_to is None:
            result[:, block] = gradient
        else:
            result[:, block] += alpha * gradient
    return result.reshape(weights.shape) if add_to is None else add_to


@dataclass(frozen=True)
class ForceSpec:
    """Force regularization settings for one run."""

    decay: float
    force_type: str = "degradation"
    decay_type: str = "fixed"
    mults: tuple = ()  # ((glob, multiplier), ...) or GlobRules, last match wins; default 1

    def __post_init__(self):
        if not (is_finite_number(self.decay) and self.decay >= 0):
            raise InputError(f"--force-decay {self.decay!r}: must be a finite number >= 0")
        object.__setattr__(self, "decay", float(self.decay))
        if self.force_type not in FORCE_TYPES:
            raise InputError(f"--force-type {self.force_type!r}: must be one of {', '.join(FORCE_TYPES)}")
        if self.decay_type not in DECAY_TYPES:
            raise InputError(f"--decay-type {self.decay_type!r}: must be one of {', '.join(DECAY_TYPES)}")
        rules = self.mults if isinstance(self.mults, GlobRules) else GlobRules(self.mults, "--force-mult")
        object.__setattr__(self, "mults", rules)
        for rule in rules.rules:
            if not (is_finite_number(rule.value) and rule.value >= 0):
                raise InputError(f"--force-mult {rule.pattern}={rule.value!r}: the multiplier must be a finite "
                                 "number >= 0")

    def coefficients(self, layer_names):
        """{layer: force_decay * force_mult} for the given weight layers."""
        mults = self.mults.resolve(layer_names, "Convolution or InnerProduct layer", default=1.0)
        return {name: self.decay * mult for name, mult in mults.items()}


def parse_mults(texts):
    """GlobRules from --force-mult GLOB=MULT texts."""
    return GlobRules.parse(texts, "--force-mult", "MULT", "ip1=0")


class ForceRegularizer(Hook):
    """Adds coefficient * dE/dW to each weight gradient at a pycaffe Solver's
    on_gradients_ready, before the update: a hook (caffedsd.hooks) run
    before the masks, so the masks have the last word on pruned positions.
    On the device backend the whole computation stays on the GPU.

    ``layouts`` is {layer: (groups, transpose)} (lowrank.filter_layout of
    the net's layers), which pycaffe cannot tell: a layer not in it is taken
    as ungrouped and untransposed."""

    order = ORDER_FORCE
    step_option = "--force-decay"

    def __init__(self, spec, iter_size=1, layouts=None):
        self.spec = spec
        # Caffe divides the accumulated gradient by iter_size after this hook.
        self.scale = iter_size
        self.layouts = dict(layouts or {})

    def bind(self, net, backend):
        """Raises InputError when a --force-mult glob matches no layer."""
        types = dict(zip(net._layer_names, (layer.type for layer in net.layers)))
        # Only what decompose splits: a Scale's 2-D gamma or a Deconvolution's
        # input-channel rows are no filters to bring into a lower rank.
        blobs = {name: blobs[0] for name, blobs in net.params.items()
                 if types.get(name) in FORCED_TYPES and len(blobs) and len(blobs[0].shape) >= 2}
        coefficients = self.spec.coefficients(list(blobs))
        seen, targets = set(), []
        for name, blob in blobs.items():
            key = backend.key(blob)
            groups, transpose = self.layouts.get(name, (1, False))
            shape = tuple(blob.shape)
            per_set = shape[1] if transpose else shape[0] // groups
            if coefficients[name] > 0 and per_set > 1 and key not in seen:
                seen.add(key)
                targets.append((blob, shape, coefficients[name], groups, transpose))
        self._targets = tuple(targets)
        self._backend = backend

    def on_gradients_ready(self):
        with np.errstate(over="ignore", invalid="ignore"):  # a blow-up is training's to report, as divergence
            self._add_forces()

    def _add_forces(self):
        xp = self._backend.xp
        for blob, shape, coefficient, groups, transpose in self._targets:
            sets = blocks(self._backend.data(blob).reshape(shape), groups, transpose)
            diffs = blocks(self._backend.diff(blob).reshape(shape), groups, transpose)
            if self.spec.decay_type == "fixed":  # added block by block: no copy of the layer
                for weights, diff in zip(sets, diffs):
                    force_gradient(weights, self.spec.force_type, xp=xp, add_to=diff, alpha=coefficient * self.scale)
                continue
            # The adaptive coefficient needs the whole force's norm first: it
            # is made in float32, as the gradient it is added to.
            grads = [force_gradient(weights, self.spec.force_type, xp=xp, dtype=xp.float32) for weights in sets]
            g_norm = xp.linalg.norm(xp.stack([xp.linalg.norm(grad) for grad in grads]))
            d_norm = xp.linalg.norm(xp.stack([xp.linalg.norm(diff) for diff in diffs]))
            ratio = xp.where(g_norm > 0, d_norm / xp.where(g_norm > 0, g_norm, 1.0), 0.0)
            # No iter_size here: the ratio's gradient is the accumulated one
            # already, iter_size times the mean that Caffe's division leaves.
            for grad, diff in zip(grads, diffs):
                grad *= coefficient * ratio
                diff += grad
