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

from .hooks import ORDER_FORCE, Hook

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


def force_gradient(weights, force_type="degradation", eps=1e-8, xp=np):
    """dE/dW, shaped like ``weights`` (float64). The force is its negative.

    ``xp`` is the array module (numpy, or CuPy for weights on the GPU): the
    computation is written without host synchronization, so on the device
    the Gram products stay there."""
    if force_type not in FORCE_TYPES:
        raise ValueError(f"unknown force type {force_type!r} (known: {', '.join(FORCE_TYPES)})")
    rows = xp.asarray(weights, dtype=xp.float64).reshape(weights.shape[0], -1)
    norms = xp.linalg.norm(rows, axis=1)
    live = (norms > eps)[:, None]
    safe = xp.where(live, norms[:, None], 1.0)
    n = xp.where(live, rows / safe, 0.0)  # unit filters; dead ones 0 and left out below
    if force_type == "degradation":
        # dE/dn_i = sum_j (n_i - n_j) = m n_i - sum_j n_j
        d_n = live.sum() * n - n.sum(axis=0)
    else:
        gram = n @ n.T
        dist = xp.sqrt(xp.maximum(2.0 - 2.0 * gram, 0.0))
        pair = (dist > 1e-12) & live & live.T  # also drops the diagonal
        inv = xp.where(pair, 1.0 / xp.where(pair, dist, 1.0), 0.0)
        # dE/dn_i = sum_j (n_i - n_j) / |n_i - n_j|
        d_n = inv.sum(axis=1)[:, None] * n - inv @ n
    tangent = d_n - xp.sum(d_n * n, axis=1, keepdims=True) * n
    return xp.where(live, tangent / safe, 0.0).reshape(weights.shape)


@dataclass(frozen=True)
class ForceSpec:
    """Force regularization settings for one run."""

    decay: float
    force_type: str = "degradation"
    decay_type: str = "fixed"
    mults: tuple = ()  # ((glob, multiplier), ...), last match wins; default 1

    def __post_init__(self):
        if not (isinstance(self.decay, (int, float)) and np.isfinite(self.decay) and self.decay >= 0):
            raise ValueError(f"--force-decay {self.decay!r}: must be a number >= 0")
        if self.force_type not in FORCE_TYPES:
            raise ValueError(f"--force-type {self.force_type!r}: must be one of {', '.join(FORCE_TYPES)}")
        if self.decay_type not in DECAY_TYPES:
            raise ValueError(f"--decay-type {self.decay_type!r}: must be one of {', '.join(DECAY_TYPES)}")
        for pattern, mult in self.mults:
            if not (np.isfinite(mult) and mult >= 0):
                raise ValueError(f"--force-mult {pattern}={mult}: the multiplier must be >= 0")

    def coefficients(self, layer_names):
        """{layer: force_decay * force_mult} for the given weight layers."""
        import fnmatch

        for pattern, _ in self.mults:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in layer_names):
                raise ValueError(f"--force-mult {pattern!r} matches no layer with weights "
                                 f"(layers: {', '.join(layer_names)})")
        out = {}
        for name in layer_names:
            mult = 1.0
            for pattern, value in self.mults:
                if fnmatch.fnmatchcase(name, pattern):
                    mult = value
            out[name] = self.decay * mult
        return out


def parse_mult(text):
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise ValueError(f"--force-mult {text!r}: expected LAYER_GLOB=MULT, e.g. 'ip1=0'")
    try:
        return pattern, float(value)
    except ValueError:
        raise ValueError(f"--force-mult {text!r}: {value!r} is not a number") from None


class ForceRegularizer(Hook):
    """Adds coefficient * dE/dW to each weight gradient at a pycaffe Solver's
    on_gradients_ready, before the update: a hook (caffedsd.hooks) run
    before the masks, so the masks have the last word on pruned positions.
    On the device backend the whole computation stays on the GPU."""

    order = ORDER_FORCE

    def __init__(self, spec, iter_size=1):
        self.spec = spec
        # Caffe divides the accumulated gradient by iter_size after this hook.
        self.scale = iter_size
        self._targets = ()
        self._backend = None

    def bind(self, net, backend):
        """Raises ValueError when a --force-mult glob matches no layer."""
        blobs = {name: blobs[0] for name, blobs in net.params.items()
                 if len(blobs) and len(blobs[0].shape) >= 2}
        coefficients = self.spec.coefficients(list(blobs))
        seen, targets = set(), []
        for name, blob in blobs.items():
            key = backend.key(blob)
            if coefficients[name] > 0 and key not in seen:
                seen.add(key)
                targets.append((blob, tuple(blob.shape), coefficients[name]))
        self._targets = tuple(targets)
        self._backend = backend

    def on_gradients_ready(self):
        xp = self._backend.xp
        for blob, shape, coefficient in self._targets:
            weights = self._backend.data(blob).reshape(shape)
            grad = force_gradient(weights, self.spec.force_type, xp=xp).reshape(-1)
            diff = self._backend.diff(blob)
            if self.spec.decay_type == "adaptive":
                g_norm = xp.linalg.norm(grad)
                ratio = xp.where(g_norm > 0, xp.linalg.norm(diff) / xp.where(g_norm > 0, g_norm, 1.0), 0.0)
                coefficient = coefficient * ratio
            diff += (coefficient * self.scale) * grad

    def release(self):
        self._targets = ()
        self._backend = None
