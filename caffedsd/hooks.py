"""One solver-hook model: hooks, the one dispatcher per Solver, backends.

pycaffe gives a Solver two hook points, ``on_start`` (before each forward)
and ``on_gradients_ready`` (after forward/backward and iter_size
accumulation, before ApplyUpdate). A ``HookDispatcher`` registers the only
callbacks caffedsd ever adds to a Solver (the one ``add_callback`` in the
package) and runs its hooks at each point in their declared ``order``:
force regularization, then weight sharing, then masking, so the masks have
the last word on pruned positions.

pycaffe cannot remove a callback. Detaching a hook takes it out of the
dispatcher's list; a dispatcher with no hooks left is disarmed: its
callbacks stay registered and do nothing.

Every hook works on flat float32 views of its blobs through a backend:

- host: numpy views of ``Blob.data`` / ``Blob.diff`` (the CPU copy; in GPU
  mode pycaffe syncs each blob to the host and back);
- device: CuPy views of ``Blob._gpu_data_ptr`` / ``_gpu_diff_ptr`` (CUDA
  builds of pycaffe), on Caffe's stream, no copy (``caffedsd.device``).

In GPU mode the device backend is chosen when it can be; otherwise the host
one, with one warning that names what it costs.
"""
import contextlib
import warnings
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import CaffeDsdWarning

# Declared order of the hooks at each hook point (lower runs first).
ORDER_FORCE = 10
ORDER_SHARING = 20
ORDER_MASK = 100

BACKENDS = ("auto", "host", "device")


@runtime_checkable
class SolverHook(Protocol):
    """What a HookDispatcher runs. ``bind`` finds the hook's blobs in the
    solver's net (raising InputError when they do not fit) and
    keeps views of them from ``backend``; ``settle`` re-establishes the
    hook's invariant outside Step (after a restore, at the end of training);
    ``release`` drops every blob reference."""

    order: int

    def bind(self, net, backend): ...

    def on_start(self): ...

    def on_gradients_ready(self): ...

    def settle(self): ...

    def release(self): ...


class Hook:
    """Base of caffedsd's hooks: no-op hook points, and attach/detach
    through the solver's one dispatcher."""

    order = 50
    # The option that sets how much the hook adds to each step: a message
    # about diverged training names it beside the learning rate.
    step_option = None
    _dispatcher = None
    # What bind() found in the net (views from the backend), and the backend:
    # release() drops both, so no blob outlives the solver's hooks.
    _targets = ()
    _backend = None

    def attach(self, solver, gpu=None, backend="auto"):
        """Add this hook to ``solver``'s dispatcher (made on first use)."""
        if self._dispatcher is not None:
            raise RuntimeError(f"{type(self).__name__} is already attached")
        HookDispatcher.for_solver(solver, gpu, backend).add(self, solver)
        return self

    def detach(self):
        if self._dispatcher is not None:
            self._dispatcher.remove(self)

    @property
    def attached(self):
        return self._dispatcher is not None

    def on_start(self):
        pass

    def on_gradients_ready(self):
        pass

    def settle(self):
        pass

    def release(self):
        self._targets = ()
        self._backend = None


class HostBackend:
    """numpy views of the blobs' CPU memory."""

    name = "host"
    xp = np
    fallback = None  # why a solver in GPU mode has it: warned of when a hook is added

    def data(self, blob):
        return _flat(blob.data)

    def diff(self, blob):
        return _flat(blob.diff)

    def asarray(self, array):
        return np.asarray(array)

    def key(self, blob):
        """Identity of a blob's memory: blobs shared through param { name }
        are one memory under two layers."""
        return blob.data.ctypes.data

    def running(self):
        return contextlib.nullcontext()

    def release(self):
        pass


def _flat(array):
    if not array.flags.c_contiguous:  # reshape would copy, and writes miss the blob
        raise RuntimeError("pycaffe blob arrays are expected to be C-contiguous")
    return array.reshape(-1)


def device_hooks_available():
    """(True, None), or (False, why not): a CUDA build of pycaffe
    (Blob._gpu_data_ptr) and CuPy that sees a GPU."""
    from .caffe_env import pycaffe_gpu_pointers

    if not pycaffe_gpu_pointers():
        return False, "this pycaffe has no Blob._gpu_data_ptr (a CPU-only or older build)"
    from . import device

    return device.available()


def select_backend(gpu=None, backend="auto"):
    """The backend for a solver on ``gpu`` (None: CPU mode, always host).
    ``backend`` "host" or "device" forces one ("device" raises
    RuntimeError when it cannot be had)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    if gpu is None or backend == "host":
        if backend == "device":
            raise RuntimeError("the device backend needs GPU mode")
        return HostBackend()
    ok, reason = device_hooks_available()
    if ok:
        from .device import DeviceBackend

        return DeviceBackend(int(gpu))
    if backend == "device":
        raise RuntimeError(f"no device hooks: {reason}")
    host = HostBackend()
    host.fallback = reason  # a phase without hooks (train-dense) pays nothing: no warning for it
    return host


class HookDispatcher:
    """The one pair of callbacks on a Solver; runs its hooks in order."""

    _ATTRIBUTE = "_caffedsd_hooks"

    def __init__(self, backend):
        self.backend = backend
        self._hooks = []

    @classmethod
    def for_solver(cls, solver, gpu=None, backend="auto"):
        """The dispatcher of ``solver``: made, and its callbacks registered,
        on first use; the same one afterwards. Its backend is chosen then."""
        dispatcher = getattr(solver, cls._ATTRIBUTE, None)
        if dispatcher is None:
            dispatcher = cls(select_backend(gpu, backend))
            # The dispatcher holds no reference to the solver, so the
            # callbacks (owned by the C++ solver) make no cycle through it.
            solver.add_callback(dispatcher.on_start, dispatcher.on_gradients_ready)
            setattr(solver, cls._ATTRIBUTE, dispatcher)
        return dispatcher

    @property
    def hooks(self):
        return tuple(self._hooks)

    def add(self, hook, solver):
        """Bind ``hook`` to ``solver``'s net and run it from now on, in its
        order (hooks of equal order: in the order added)."""
        if not isinstance(hook, SolverHook):
            raise TypeError(f"{type(hook).__name__} is not a SolverHook")
        if getattr(self.backend, "fallback", None):
            warnings.warn(CaffeDsdWarning(
                f"GPU mode without device hooks: {self.backend.fallback}. Every hooked weight blob and its gradient "
                "cross PCIe twice at every iteration (16 bytes per hooked weight per step); install caffedsd[gpu] "
                "(CuPy) with a CUDA build of pycaffe to keep them on the GPU"), stacklevel=2)
        with self.backend.running():
            hook.bind(solver.net, self.backend)
        hook._dispatcher = self
        self._hooks.append(hook)
        self._hooks.sort(key=lambda h: h.order)  # stable
        return hook

    def remove(self, hook):
        if hook in self._hooks:
            self._hooks.remove(hook)
        hook.release()
        hook._dispatcher = None
        if not self._hooks:
            self.backend.release()

    def settle(self):
        with self.backend.running():
            for hook in self._hooks:
                hook.settle()

    def detach(self):
        """Remove every hook: the callbacks stay registered, disarmed."""
        for hook in list(self._hooks):
            self.remove(hook)

    def on_start(self):
        if self._hooks:
            with self.backend.running():
                for hook in self._hooks:
                    hook.on_start()

    def on_gradients_ready(self):
        if self._hooks:
            with self.backend.running():
                for hook in self._hooks:
                    hook.on_gradients_ready()


def net_weight_blobs(net):
    """{layer: blob 0} of a pycaffe Net's layers that have blobs."""
    return {name: blobs[0] for name, blobs in net.params.items() if len(blobs)}
