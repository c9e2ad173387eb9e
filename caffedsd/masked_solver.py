"""Holding pruned weights at exactly zero while a pycaffe Solver trains.

A MaskEnforcer attaches to a Solver at Caffe's own hook points:

- ``on_gradients_ready`` (after forward/backward and iter_size accumulation,
  before ApplyUpdate): pruned positions of each weight's gradient are set to
  0.0. Weight decay then adds decay * 0 there, and every solver's history
  (momentum, AdaGrad/RMSProp/AdaDelta/Adam moments) stays 0 where it was 0,
  so ApplyUpdate leaves pruned weights at exactly 0.0, and so do the
  snapshots Caffe writes inside Step, after ApplyUpdate, before Python runs.
- ``on_start`` (before each forward): pruned weights are set to 0.0 again.

History that is already non-zero at pruned positions (a solverstate from a
dense run) would move pruned weights; ``solverstate.clean_solverstate``
zeroes it before a restore.

pycaffe cannot remove a callback, so ``detach`` disarms it: the callbacks
stay registered and do nothing. The dense phase of DSD is just "detached".
"""
import numpy as np

from .errors import InputError


class _Target:
    """One masked weight blob (shared blobs appear once)."""

    __slots__ = ("blob", "keep_bits", "layers")

    def __init__(self, blob, mask, layers):
        self.blob = blob
        # All ones where kept, all zeros where pruned: one bitwise AND over the
        # float32 bits writes exactly +0.0 at pruned positions and leaves kept
        # values untouched, about 4x faster than an indexed assignment.
        self.keep_bits = np.where(mask.reshape(-1), np.uint32(0xFFFFFFFF), np.uint32(0))
        self.layers = layers

    @staticmethod
    def _and(array, bits):
        if not array.flags.c_contiguous:  # reshape would copy, and the AND miss the blob
            raise RuntimeError("pycaffe blob arrays are expected to be C-contiguous")
        flat = array.reshape(-1).view(np.uint32)
        np.bitwise_and(flat, bits, out=flat)

    def zero_weights(self):
        self._and(self.blob.data, self.keep_bits)

    def zero_gradient(self):
        self._and(self.blob.diff, self.keep_bits)


def net_weight_blobs(net):
    """{layer: blob 0} of a pycaffe Net's layers that have blobs."""
    return {name: blobs[0] for name, blobs in net.params.items() if len(blobs)}


class MaskEnforcer:
    """Keeps the masked weights of one Solver at exactly 0.0 (see module doc).

    ``masks`` maps layer names to boolean keep-masks of their blob 0.
    """

    def __init__(self, masks):
        self.masks = {name: np.asarray(mask, dtype=bool) for name, mask in masks.items()}
        self._targets = ()
        self._solver = None

    @property
    def attached(self):
        return self._solver is not None

    def attach(self, solver, where="solver net"):
        """Bind to ``solver``'s net and start enforcing. Raises InputError when
        the masks do not fit the net (missing layer or other shape)."""
        if self._solver is not None:
            raise RuntimeError("MaskEnforcer is already attached")
        blobs = net_weight_blobs(solver.net)
        missing = [name for name in self.masks if name not in blobs]
        if missing:
            raise InputError(f"masks do not fit the {where}: no layer {', '.join(missing)} with weights there")
        by_address, targets = {}, []
        for name, mask in self.masks.items():
            blob = blobs[name]
            if tuple(blob.data.shape) != mask.shape:
                raise InputError(f"masks do not fit the {where}: layer {name} weights are "
                                 f"{list(blob.data.shape)}, its mask {list(mask.shape)}")
            address = blob.data.ctypes.data  # shared params are one blob
            if address in by_address:
                continue
            by_address[address] = True
            targets.append(_Target(blob, mask, (name,)))
        self._targets = tuple(targets)
        self._solver = solver
        solver.add_callback(self._on_start, self._on_gradients_ready)
        self.zero_weights()
        return self

    def detach(self):
        """Stop enforcing. The weights keep their current values."""
        self._targets = ()
        self._solver = None

    def zero_weights(self):
        for target in self._targets:
            target.zero_weights()

    def _on_start(self):
        for target in self._targets:
            target.zero_weights()

    def _on_gradients_ready(self):
        for target in self._targets:
            target.zero_gradient()
