"""Holding pruned weights at exactly zero while a pycaffe Solver trains.

A MaskEnforcer is the masking hook (caffedsd.hooks), run last at each hook
point:

- ``on_gradients_ready`` (after forward/backward and iter_size accumulation,
  before ApplyUpdate): pruned positions of each weight's gradient are set to
  0.0. Weight decay then adds decay * 0 there, and every solver's history
  (momentum, AdaGrad/RMSProp/AdaDelta/Adam moments) stays 0 where it was 0,
  so ApplyUpdate leaves pruned weights at exactly 0.0. (Snapshots are
  taken between steps, after the dispatcher's ``settle``: caffedsd opens
  every solver with Caffe's own off.)
- ``on_start`` (before each forward): pruned weights are set to 0.0 again.

History that is already non-zero at pruned positions (a solverstate from a
dense run) would move pruned weights; ``solverstate.clean_solverstate``
zeroes it before a restore.
"""
import numpy as np

from .errors import InputError
from .hooks import ORDER_MASK, Hook, net_weight_blobs

__all__ = ["MaskEnforcer"]


def keep_bits(mask):
    """All ones where kept, all zeros where pruned: one bitwise AND over the
    float32 bits writes exactly +0.0 at pruned positions and leaves kept
    values untouched, about 4x faster than an indexed assignment."""
    return np.where(np.asarray(mask, dtype=bool).reshape(-1), np.uint32(0xFFFFFFFF), np.uint32(0))


class MaskEnforcer(Hook):
    """Keeps the masked weights of one Solver at exactly 0.0 (see module doc).

    ``masks`` maps layer names to boolean keep-masks of their blob 0;
    ``where`` names the net in error messages.
    """

    order = ORDER_MASK

    def __init__(self, masks, where="solver net"):
        self.masks = {name: np.asarray(mask, dtype=bool) for name, mask in masks.items()}
        self.where = where

    def bind(self, net, backend):
        """Raises InputError when the masks do not fit the net (missing
        layer or other shape)."""
        blobs = net_weight_blobs(net)
        missing = [name for name in self.masks if name not in blobs]
        if missing:
            raise InputError(f"masks do not fit the {self.where}: no layer {', '.join(missing)} with weights there")
        seen, targets = {}, []
        for name, mask in self.masks.items():
            blob = blobs[name]
            if tuple(blob.shape) != mask.shape:
                raise InputError(f"masks do not fit the {self.where}: layer {name} weights are "
                                 f"{list(blob.shape)}, its mask {list(mask.shape)}")
            key = backend.key(blob)  # shared params are one blob
            if key in seen:
                first, held = seen[key]
                if not np.array_equal(held, mask):  # one of them would not be held
                    raise InputError(f"masks do not fit the {self.where}: layers {first} and {name} share their "
                                     "weights there, but their masks differ")
                continue
            seen[key] = (name, mask)
            targets.append((blob, backend.asarray(keep_bits(mask))))
        self._targets = tuple(targets)
        self._backend = backend
        self._and_all(backend.data)

    def _and_all(self, view):
        xp = self._backend.xp
        for blob, bits in self._targets:
            flat = view(blob).view(xp.uint32)
            xp.bitwise_and(flat, bits, out=flat)

    def on_start(self):
        self._and_all(self._backend.data)

    def on_gradients_ready(self):
        self._and_all(self._backend.diff)

    def settle(self):
        self._and_all(self._backend.data)
