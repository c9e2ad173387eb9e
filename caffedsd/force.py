"""Force regularization (Wen et al., ICCV 2017), computed in the driver.

A weight blob with two or more axes is N filters (its rows). Each filter is
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

FORCE_TYPES = ("degradation", "constant")
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


def force_gradient(weights, force_type="degradation", eps=1e-8):
    """dE/dW, shaped like ``weights`` (float64). The force is its negative."""
    if force_type not in FORCE_TYPES:
        raise ValueError(f"unknown force type {force_type!r} (known: {', '.join(FORCE_TYPES)})")
    rows, norms, live, unit = _normalized(weights, eps)
    grad = np.zeros_like(rows)
    if live.sum() < 2:
        return grad.reshape(weights.shape)
    n = unit[live]
    if force_type == "degradation":
        # dE/dn_i = sum_j (n_i - n_j) = m n_i - sum_j n_j
        d_n = len(n) * n - n.sum(axis=0)
    else:
        gram = n @ n.T
        dist = np.sqrt(np.maximum(2.0 - 2.0 * gram, 0.0))
        with np.errstate(divide="ignore"):
            inv = np.where(dist > 1e-12, 1.0 / dist, 0.0)
        np.fill_diagonal(inv, 0.0)
        # dE/dn_i = sum_j (n_i - n_j) / |n_i - n_j|
        d_n = inv.sum(axis=1)[:, None] * n - inv @ n
    tangent = d_n - np.sum(d_n * n, axis=1, keepdims=True) * n
    grad[live] = tangent / norms[live, None]
    return grad.reshape(weights.shape)


@dataclass(frozen=True)
class ForceSpec:
    """Force regularization settings for one run."""

    decay: float
    force_type: str = "degradation"
    decay_type: str = "fixed"
    mults: tuple = ()  # ((glob, multiplier), ...) or GlobRules, last match wins; default 1

    def __post_init__(self):
        if not (isinstance(self.decay, (int, float)) and np.isfinite(self.decay) and self.decay >= 0):
            raise InputError(f"--force-decay {self.decay!r}: must be a number >= 0")
        if self.force_type not in FORCE_TYPES:
            raise InputError(f"--force-type {self.force_type!r}: must be one of {', '.join(FORCE_TYPES)}")
        if self.decay_type not in DECAY_TYPES:
            raise InputError(f"--decay-type {self.decay_type!r}: must be one of {', '.join(DECAY_TYPES)}")
        rules = self.mults if isinstance(self.mults, GlobRules) else GlobRules(self.mults, "--force-mult")
        object.__setattr__(self, "mults", rules)
        for rule in rules.rules:
            if not (np.isfinite(rule.value) and rule.value >= 0):
                raise InputError(f"--force-mult {rule.pattern}={rule.value}: the multiplier must be >= 0")

    def coefficients(self, layer_names):
        """{layer: force_decay * force_mult} for the given weight layers."""
        mults = self.mults.resolve(layer_names, "layer with weights", default=1.0)
        return {name: self.decay * mult for name, mult in mults.items()}


def parse_mults(texts):
    """GlobRules from --force-mult GLOB=MULT texts."""
    return GlobRules.parse(texts, "--force-mult", "MULT", "ip1=0")


class ForceRegularizer:
    """Adds coefficient * dE/dW to each weight gradient at a pycaffe Solver's
    on_gradients_ready, before the update. Attach it before a MaskEnforcer so
    the masks have the last word on pruned positions."""

    def __init__(self, spec, iter_size=1):
        self.spec = spec
        # Caffe divides the accumulated gradient by iter_size after this hook.
        self.scale = iter_size
        self._targets = ()

    def attach(self, solver):
        blobs = {name: blobs[0] for name, blobs in solver.net.params.items()
                 if len(blobs) and blobs[0].data.ndim >= 2}
        coefficients = self.spec.coefficients(list(blobs))
        seen, targets = set(), []
        for name, blob in blobs.items():
            address = blob.data.ctypes.data
            if coefficients[name] > 0 and address not in seen:
                seen.add(address)
                targets.append((blob, coefficients[name]))
        self._targets = tuple(targets)
        solver.add_callback(lambda: None, self._on_gradients_ready)
        return self

    def detach(self):
        self._targets = ()

    def _on_gradients_ready(self):
        for blob, coefficient in self._targets:
            grad = force_gradient(blob.data, self.spec.force_type)
            if self.spec.decay_type == "adaptive":
                g_norm = np.linalg.norm(grad)
                if g_norm == 0:
                    continue
                coefficient = coefficient * np.linalg.norm(blob.diff) / g_norm
            blob.diff[...] += (coefficient * self.scale) * grad
