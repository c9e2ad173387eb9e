"""The device backend of the solver hooks: CuPy views of Caffe's GPU memory.

The only module that imports CuPy. In a CUDA build, pycaffe's Blob has
``_gpu_data_ptr`` and ``_gpu_diff_ptr`` (BVLC PR #5904): the address of
``mutable_gpu_data()`` / ``mutable_gpu_diff()``. Reading them also makes the
GPU copy the blob's head, so what a hook writes there is what Caffe uses
next, and nothing is copied to the host. Each address is wrapped as a
float32 CuPy array with ``UnownedMemory`` + ``MemoryPointer`` (no copy,
the Blob object kept alive as the owner).

Hooks run on the CUDA legacy default stream, the one Caffe launches its
kernels and cuBLAS calls on, so their work is ordered between Caffe's
backward pass and its update with no extra synchronization.
"""
try:
    import cupy
except ImportError:  # caffedsd[gpu] not installed
    cupy = None

# cudaStreamLegacy, whatever CuPy's own default stream is configured to be.
_LEGACY_STREAM_HANDLE = 1


class _LegacyStreamHandle:
    """cudaStreamLegacy as the CUDA stream protocol gives a stream: (version, handle)."""

    def __cuda_stream__(self):
        return (0, _LEGACY_STREAM_HANDLE)


def legacy_stream(device_id):
    """A CuPy Stream on cudaStreamLegacy."""
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None:  # CuPy 14 deprecates ExternalStream for this
        return from_external(_LegacyStreamHandle())
    try:
        return cupy.cuda.ExternalStream(_LEGACY_STREAM_HANDLE, device_id)
    except TypeError:  # CuPy < 13 takes the handle only
        return cupy.cuda.ExternalStream(_LEGACY_STREAM_HANDLE)


def available():
    """(True, None), or (False, why not)."""
    if cupy is None:
        return False, "CuPy is not installed (pip install 'caffedsd[gpu]')"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return False, f"CuPy sees no GPU ({exc})"
    if count < 1:
        return False, "CuPy sees no GPU"
    return True, None


class DeviceBackend:
    """CuPy views of the blobs' GPU memory on device ``device_id``."""

    name = "device"

    def __init__(self, device_id):
        if cupy is None:
            raise RuntimeError("CuPy is not installed")
        self.xp = cupy
        self.device_id = int(device_id)
        self._device = cupy.cuda.Device(self.device_id)
        self._stream = legacy_stream(self.device_id)
        self._views = {}  # (id(blob), "data"/"diff") -> (address, array)

    def data(self, blob):
        return self._view(blob, "data", blob._gpu_data_ptr)

    def diff(self, blob):
        return self._view(blob, "diff", blob._gpu_diff_ptr)

    def _view(self, blob, which, address):
        # The address is read every time (it moves the head to the GPU);
        # the wrapper is rebuilt only if Caffe reallocated the memory.
        key = (id(blob), which)
        cached = self._views.get(key)
        if cached is not None and cached[0] == address:
            return cached[1]
        count = int(blob.count)
        memory = cupy.cuda.UnownedMemory(address, count * 4, blob, self.device_id)
        array = cupy.ndarray((count,), dtype=cupy.float32, memptr=cupy.cuda.MemoryPointer(memory, 0))
        self._views[key] = (address, array)
        return array

    def asarray(self, array):
        with self._device:
            return cupy.asarray(array)

    def key(self, blob):
        return blob._gpu_data_ptr

    def running(self):
        return _Running(self._device, self._stream)

    def release(self):
        self._views.clear()


class _Running:
    """On the backend's device and Caffe's stream, for the duration."""

    def __init__(self, device, stream):
        self.device = device
        self.stream = stream

    def __enter__(self):
        self.device.__enter__()
        self.stream.__enter__()
        return self

    def __exit__(self, *exc):
        self.stream.__exit__(*exc)
        self.device.__exit__(*exc)
        return False
