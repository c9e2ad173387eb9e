"""SqueezeNet net definitions, built as protobuf messages.

With default settings ``SqueezeNetSpec()`` writes SqueezeNet v1.0 exactly as
released (forresti/SqueezeNet): train_val, deploy and solver equal, as parsed
messages, to the release's files; ``version="1.1"`` likewise for v1.1. The
release's quirks are kept: no ``param`` specs (biases learn at the base rate,
with weight decay), no mirroring, no net name, v1.0's deploy uses the old
``input``/``input_shape`` fields, v1.1 leaves loss and accuracy in both
phases, and the solver's paths are relative (run ``caffe train`` from inside
the folder). caffedsd's extras are options: ``bias_lr2`` (BVLC's
``lr_mult 1/2, decay_mult 1/0`` specs), ``mirror``, ``split_phases`` (loss in
TRAIN, accuracies in TEST, for v1.1) and ``solver_mode="cpu"``.

Design space (SqueezeNet paper, section 5), for Fire module i = 0..7:
  e_i        = base_e + incr_e * floor(i / freq)   expand filters
  e_i,3x3    = round(pct3x3 * e_i),  e_i,1x1 = e_i - e_i,3x3
  s_i,1x1    = round(sr * e_i)                     squeeze filters
Bypass: "simple" adds an identity (Eltwise SUM) around every Fire module
whose input and output channel counts match; "complex" also adds a 1x1
convolution bypass around the others.

The "small" stem (3x3 stride-1 conv1) suits small inputs such as 28x28
Fashion-MNIST, where the 7x7/2 stem would pool the image away. The release's
xavier filler shrinks the signal through the ReLUs of this deep plain net
(at 28x28 on Fashion-MNIST it never left the uniform output); ``msra``
(He) initialization, for every convolution, trains it.
"""
import functools
import math
from dataclasses import dataclass
from pathlib import Path

from .caffe_proto import NetParameter, SolverParameter
from .errors import InputError, SqueezeNetError
from .globrules import number_list
from .values import GREATEST_FLOAT32, INT32_MAX, LEAST_NORMAL_FLOAT32

VERSIONS = ("1.0", "1.1")
BYPASSES = ("none", "simple", "complex")
STEMS = ("standard", "small")
FILLERS = ("xavier", "msra")
DATA = ("lmdb", "hdf5")
# Caffe's blob shapes and element counts are C ints (and num_output,
# crop_size, batch_size are uint32 in its protobuf): a setting or a blob
# beyond INT32_MAX makes a net Caffe aborts on, or no prototxt at all.


@dataclass(frozen=True)
class Fire:
    name: str
    squeeze: int
    expand1x1: int
    expand3x3: int

    @property
    def out_channels(self):
        return self.expand1x1 + self.expand3x3


@dataclass(frozen=True)
class SqueezeNetSpec:
    version: str = "1.0"
    bypass: str = "none"
    base_e: int = 128
    incr_e: int = 128
    freq: int = 2
    pct3x3: float = 0.5
    sr: float = 0.125
    num_classes: int = 1000
    input_size: int = 227
    channels: int = 3
    stem: str = "standard"
    weight_filler: str = "xavier"
    data: str = "lmdb"
    train_source: str = "examples/imagenet/ilsvrc12_train_lmdb"
    test_source: str = "examples/imagenet/ilsvrc12_val_lmdb"
    train_batch: int = 32
    test_batch: int = 25
    bias_lr2: bool = False
    mirror: bool = False
    split_phases: bool = False
    solver_mode: str = "gpu"
    scale: float = None  # the Data layers' transform_param scale (uint8 pixels to about [0, 1): 1/256)

    def __post_init__(self):
        for name, value, choices in (("version", self.version, VERSIONS), ("bypass", self.bypass, BYPASSES),
                                     ("stem", self.stem, STEMS), ("data", self.data, DATA),
                                     ("weight-filler", self.weight_filler, FILLERS)):
            if value not in choices:
                raise SqueezeNetError(f"--{name} {value!r}: must be one of {', '.join(choices)}")
        for name in ("train_source", "test_source"):  # an unset shell variable: no default taken instead
            if not (isinstance(getattr(self, name), str) and getattr(self, name).strip()):
                raise SqueezeNetError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: names no data")
        if self.data == "hdf5":  # Caffe's HDF5Data reads list files, and transforms nothing
            lmdb = [f"--{name.replace('_', '-')}" for name in ("train_source", "test_source")
                    if getattr(self, name) == getattr(SqueezeNetSpec, name)]
            if lmdb:  # left out, or the default given by hand
                raise SqueezeNetError(f"--data hdf5 needs {' and '.join(lmdb)}: HDF5Data reads a list of HDF5 "
                                      f"files, and {getattr(SqueezeNetSpec, lmdb[0][2:].replace('-', '_'))} "
                                      "(the default) is an LMDB folder")
            if self.mirror:
                raise SqueezeNetError("--mirror goes with --data lmdb: HDF5Data applies no transformation")
            if self.scale is not None:
                raise SqueezeNetError("--scale goes with --data lmdb: HDF5Data applies no transformation (scale "
                                      "the arrays when writing them, as `caffedsd data` does)")
        # transform_param's scale is a float32: past its range it is written as inf or 0.
        if self.scale is not None and not (isinstance(self.scale, (int, float))
                                           and LEAST_NORMAL_FLOAT32 <= self.scale <= GREATEST_FLOAT32):
            raise SqueezeNetError(f"--scale {self.scale!r}: must be a number above 0 that a float32 holds "
                                  f"({LEAST_NORMAL_FLOAT32:.4g} to {GREATEST_FLOAT32:.4g})")
        if self.solver_mode not in ("gpu", "cpu"):
            raise SqueezeNetError(f"--solver-mode {self.solver_mode!r}: must be one of gpu, cpu")
        for name in ("sr", "pct3x3"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise SqueezeNetError(f"--{name} {value!r}: must be in (0, 1]")
        for name in ("base_e", "incr_e", "freq", "num_classes", "input_size", "channels",
                     "train_batch", "test_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SqueezeNetError(f"--{name.replace('_', '-')} {value!r}: must be a whole number")
            if value > INT32_MAX:
                raise SqueezeNetError(f"--{name.replace('_', '-')} {value}: must be at most {INT32_MAX}")
        if self.train_batch < 1 or self.test_batch < 1:
            raise SqueezeNetError("the train and test batch sizes must be >= 1")
        if self.base_e < 1 or self.incr_e < 0 or self.freq < 1:
            raise SqueezeNetError("--base-e and --freq must be >= 1, --incr-e >= 0")
        if self.num_classes < 2:
            raise SqueezeNetError(f"--num-classes {self.num_classes}: must be at least 2")
        if self.channels < 1 or self.input_size < 1:
            raise SqueezeNetError("--channels and --input-size must be >= 1")
        self.fires()  # checks the filter counts
        if self.bypass == "simple" and not any(kind for kind, _ in self._bypasses()):
            raise SqueezeNetError("--bypass simple: no Fire module keeps its input's width with these settings "
                                  "(an identity bypass needs equal widths), so none would be added; give "
                                  "--bypass complex, or other --base-e/--incr-e/--freq")
        self.spatial_sizes()  # checks the input survives the pooling
        for what, count in self.blob_counts():
            if count > INT32_MAX:
                raise SqueezeNetError(f"{what} would hold {count} values, more than a Caffe blob can "
                                      f"({INT32_MAX}): give fewer filters or classes, or a smaller input")

    # -- the architecture, as numbers ----------------------------------------
    def fires(self):
        modules = []
        for i in range(8):
            name = f"fire{i + 2}"
            e = self.base_e + self.incr_e * (i // self.freq)
            e3 = round(self.pct3x3 * e)
            e1 = e - e3
            s = round(self.sr * e)
            for what, count in (("squeeze1x1", s), ("expand1x1", e1), ("expand3x3", e3)):
                if count < 1:
                    raise SqueezeNetError(f"{name}/{what} gets {count} filters (e={e}, sr={self.sr:g}, "
                                          f"pct3x3={self.pct3x3:g}): every filter count must be at least 1")
            modules.append(Fire(name, s, e1, e3))
        return modules

    def conv1(self):
        """(filters, kernel, stride, pad) of conv1."""
        if self.stem == "small":
            return (64 if self.version == "1.1" else 96), 3, 1, 1
        return (96, 7, 2, 0) if self.version == "1.0" else (64, 3, 2, 0)

    def pool_after(self):
        """Names of the tops followed by a 3x3/2 max pooling (besides conv1)."""
        return ("fire4", "fire8") if self.version == "1.0" else ("fire3", "fire5")

    def spatial_sizes(self):
        """{blob: side} through the net; raises when the input pools to nothing."""
        _, kernel, stride, pad = self.conv1()
        side = (self.input_size + 2 * pad - kernel) // stride + 1
        sizes = {"conv1": side}

        def pool(side, where):
            # Caffe's pooling rounds up, and a window may run past the edge:
            # 2x2 pools to 1x1, 1x1 to nothing.
            out = math.ceil((side - 3) / 2) + 1
            if out < 1:
                raise SqueezeNetError(f"--input-size {self.input_size}: nothing is left at {where} "
                                      f"({side}x{side} before a 3x3 pooling)")
            return out

        if side < 1:
            raise SqueezeNetError(f"--input-size {self.input_size}: smaller than conv1's {kernel}x{kernel} kernel")
        side = pool(side, "pool1")
        for fire in self.fires():
            sizes[fire.name] = side
            if fire.name in self.pool_after():
                side = pool(side, f"pool{fire.name[4:]}")
        sizes["conv10"] = side
        return sizes

    def parameters(self):
        """Learnable parameter count (weights and biases) of the net."""
        filters, kernel, _, _ = self.conv1()
        total = filters * self.channels * kernel * kernel + filters
        channels = filters
        for fire, (kind, _) in zip(self.fires(), self._bypasses()):
            total += fire.squeeze * channels + fire.squeeze
            total += fire.expand1x1 * fire.squeeze + fire.expand1x1
            total += fire.expand3x3 * fire.squeeze * 9 + fire.expand3x3
            if kind == "conv":
                total += fire.out_channels * channels + fire.out_channels
            channels = fire.out_channels
        return total + self.num_classes * channels + self.num_classes

    def blob_counts(self):
        """(what, element count) of the blobs Caffe makes for the net: the
        weights, the tops at the largest batch (train, test or deploy's 10)
        and the im2col buffers of the convolutions bigger than 1x1."""
        batch = max(self.train_batch, self.test_batch, 10)
        sizes = self.spatial_sizes()
        filters, kernel, _, _ = self.conv1()
        top = f"blob {{}} at batch {batch}"
        yield top.format("data"), batch * self.channels * self.input_size ** 2
        yield "conv1's weights", filters * self.channels * kernel ** 2
        yield "conv1's im2col buffer", self.channels * kernel ** 2 * sizes["conv1"] ** 2
        yield top.format("conv1"), batch * filters * sizes["conv1"] ** 2
        channels = filters
        for fire, (kind, _) in zip(self.fires(), self._bypasses()):
            area = sizes[fire.name] ** 2
            yield f"{fire.name}/squeeze1x1's weights", fire.squeeze * channels
            yield f"{fire.name}/expand1x1's weights", fire.expand1x1 * fire.squeeze
            yield f"{fire.name}/expand3x3's weights", fire.expand3x3 * fire.squeeze * 9
            yield f"{fire.name}/expand3x3's im2col buffer", fire.squeeze * 9 * area
            if kind == "conv":
                yield f"{fire.name}/bypass1x1's weights", fire.out_channels * channels
            yield top.format(f"{fire.name}/squeeze1x1"), batch * fire.squeeze * area
            yield top.format(f"{fire.name}/concat"), batch * fire.out_channels * area
            channels = fire.out_channels
        side = sizes["conv10"] + (2 if self.version == "1.0" else 0)  # v1.0 pads its 1x1 conv10
        yield "conv10's weights", self.num_classes * channels
        yield top.format("conv10"), batch * self.num_classes * side ** 2

    def _bypasses(self):
        """Per Fire module: (kind, input channels); kind None, 'identity' or 'conv'."""
        channels = self.conv1()[0]
        out = []
        for fire in self.fires():
            if self.bypass == "none":
                kind = None
            elif channels == fire.out_channels:
                kind = "identity"
            else:
                kind = "conv" if self.bypass == "complex" else None
            out.append((kind, channels))
            channels = fire.out_channels
        return out

    # -- the prototxts ---------------------------------------------------------
    def net(self, phase="train_val"):
        """NetParameter for "train_val" or "deploy"."""
        net = NetParameter()
        deploy = phase == "deploy"
        shape = [10, self.channels, self.input_size, self.input_size]
        if deploy and self.version == "1.0":
            net.input.append("data")  # the v1.0 release's deploy uses the old fields
            net.input_shape.add(dim=shape)
        elif deploy:
            layer = net.layer.add(name="data", type="Input", top=["data"])
            layer.input_param.shape.add(dim=shape)
        else:
            self._data_layers(net)
        filters, kernel, stride, pad = self.conv1()
        # Fillers only where Caffe fills: deploy nets get their weights from a file.
        filler = None if deploy else (self.weight_filler, None)
        conv = functools.partial(_conv, net, bias_lr2=self.bias_lr2)
        top = conv("conv1", "data", filters, kernel, stride=stride, pad=pad, filler=filler)
        top = _pool(net, "pool1", top)
        for fire, (kind, _) in zip(self.fires(), self._bypasses()):
            fire_in = top
            top = _fire(conv, net, fire, fire_in, filler)
            if kind is not None:
                top = _bypass(conv, net, fire, fire_in, top, kind, filler)
            if fire.name in self.pool_after():
                top = _pool(net, f"pool{fire.name[4:]}", top)
        drop = net.layer.add(name="drop9", type="Dropout", bottom=[top], top=[top])
        drop.dropout_param.dropout_ratio = 0.5
        conv10_filler = None if deploy else ("gaussian", 0.01) if self.weight_filler == "xavier" else filler
        conv10 = conv("conv10", top, self.num_classes, 1, pad=1 if self.version == "1.0" else 0,
                      filler=conv10_filler)
        pool10 = net.layer.add(name="pool10", type="Pooling", bottom=[conv10], top=["pool10"])
        pool10.pooling_param.pool = pool10.pooling_param.AVE
        pool10.pooling_param.global_pooling = True
        if deploy:
            net.layer.add(name="prob", type="Softmax", bottom=["pool10"], top=["prob"])
            return net
        # v1.0's release restricts loss to TRAIN and accuracies to TEST; v1.1's
        # leaves them in both phases (its include lines are commented out).
        split = self.version == "1.0" or self.split_phases
        loss = net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=["pool10", "label"], top=["loss"])
        if split:
            loss.include.add(phase=0)
        for name, k in (("accuracy", 1), ("accuracy_top5", 5)):
            if k < self.num_classes:
                acc = net.layer.add(name=name, type="Accuracy", bottom=["pool10", "label"], top=[name])
                if split:
                    acc.include.add(phase=1)
                if k > 1:
                    acc.accuracy_param.top_k = k
        return net

    def name(self):
        suffix = "" if self.bypass == "none" else f"_{self.bypass}_bypass"
        return f"SqueezeNet_v{self.version}{suffix}"

    def _data_layers(self, net):
        for phase, source, batch in ((0, self.train_source, self.train_batch), (1, self.test_source, self.test_batch)):
            if self.data == "hdf5":
                layer = net.layer.add(name="data", type="HDF5Data", top=["data", "label"])
                layer.hdf5_data_param.source = source
                layer.hdf5_data_param.batch_size = batch
                layer.hdf5_data_param.shuffle = phase == 0
            else:
                layer = net.layer.add(name="data", type="Data", top=["data", "label"])
                layer.transform_param.crop_size = self.input_size
                if self.mirror and phase == 0:
                    layer.transform_param.mirror = True
                if self.channels == 3:
                    layer.transform_param.mean_value.extend([104, 117, 123])
                if self.scale is not None:  # after the mean, as Caffe's DataTransformer applies it
                    layer.transform_param.scale = self.scale
                layer.data_param.source = source
                layer.data_param.batch_size = batch
                layer.data_param.backend = layer.data_param.LMDB
            layer.include.add(phase=phase)

    def solver(self, net_path="train_val.prototxt", snapshot_prefix="train"):
        """The release's training settings (poly lr from 0.04; the same for
        v1.0 and v1.1), paths relative to the folder it lies in."""
        mode = SolverParameter.GPU if self.solver_mode == "gpu" else SolverParameter.CPU
        return SolverParameter(net=net_path, test_iter=[2000], test_interval=1000, base_lr=0.04,
                               display=40, max_iter=170000, iter_size=16, lr_policy="poly", power=1.0,
                               momentum=0.9, weight_decay=0.0002, snapshot=1000,
                               snapshot_prefix=snapshot_prefix, test_initialization=False, random_seed=42,
                               solver_mode=mode, average_loss=40)


def _filler(param, filler):
    if filler is None:
        return
    kind, std = filler
    param.weight_filler.type = kind
    if kind == "gaussian":
        param.weight_filler.mean = 0.0
        param.weight_filler.std = std


def _conv(net, name, bottom, filters, kernel, stride=1, pad=0, filler=("xavier", None), relu=True,
          bias_lr2=False):
    layer = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
    if bias_lr2:
        layer.param.add(lr_mult=1, decay_mult=1)
        layer.param.add(lr_mult=2, decay_mult=0)
    conv = layer.convolution_param
    conv.num_output = filters
    if pad:
        conv.pad.append(pad)
    conv.kernel_size.append(kernel)
    if stride != 1:
        conv.stride.append(stride)
    _filler(conv, filler)
    if relu:
        parent, _, leaf = name.rpartition("/")
        relu_name = f"{parent}/relu_{leaf}" if parent else f"relu_{name}"
        net.layer.add(name=relu_name, type="ReLU", bottom=[name], top=[name])
    return name


def _pool(net, name, bottom):
    layer = net.layer.add(name=name, type="Pooling", bottom=[bottom], top=[name])
    layer.pooling_param.pool = layer.pooling_param.MAX
    layer.pooling_param.kernel_size = 3
    layer.pooling_param.stride = 2
    return name


def _fire(conv, net, fire, bottom, filler):
    squeeze = conv(f"{fire.name}/squeeze1x1", bottom, fire.squeeze, 1, filler=filler)
    e1 = conv(f"{fire.name}/expand1x1", squeeze, fire.expand1x1, 1, filler=filler)
    e3 = conv(f"{fire.name}/expand3x3", squeeze, fire.expand3x3, 3, pad=1, filler=filler)
    net.layer.add(name=f"{fire.name}/concat", type="Concat", bottom=[e1, e3], top=[f"{fire.name}/concat"])
    return f"{fire.name}/concat"


def _bypass(conv, net, fire, fire_in, fire_out, kind, filler):
    if kind == "conv":
        fire_in = conv(f"{fire.name}/bypass1x1", fire_in, fire.out_channels, 1, relu=False, filler=filler)
    net.layer.add(name=f"{fire.name}/bypass", type="Eltwise", bottom=[fire_in, fire_out],
                  top=[f"{fire.name}/bypass"])
    return f"{fire.name}/bypass"


def parse_sweep(items):
    """['sr=0.125,0.25', 'pct3x3=0.5'] -> {'sr': [0.125, 0.25], 'pct3x3': [0.5]}."""
    knobs = {"sr": float, "pct3x3": float, "base_e": int, "incr_e": int, "freq": int}
    sweep = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in knobs:
            raise SqueezeNetError(f"--sweep {item}: expected KNOB=V1,V2,... with KNOB one of "
                                  f"{', '.join(knobs)}")
        if key in sweep:  # a dict keeps the last: the rows of the first vanished
            raise SqueezeNetError(f"--sweep {item}: {key} is given twice; give all its values in one "
                                  f"{key}=V1,V2,...")
        try:
            sweep[key] = list(number_list(values, f"--sweep {key}", knobs[key]))
        except InputError as exc:
            raise SqueezeNetError(str(exc)) from None
    return sweep


def sweep_rows(base, sweep):
    """[(settings dict, parameters, megabytes)] over the grid of ``sweep``."""
    from dataclasses import replace
    from itertools import product

    keys = list(sweep)
    rows = []
    for values in product(*(sweep[k] for k in keys)):
        settings = dict(zip(keys, values))
        spec = replace(base, **settings)
        params = spec.parameters()
        rows.append((settings, params, params * 4 / 2 ** 20))
    return rows


def write_squeezenet(spec, out_dir, force=False):
    """train_val.prototxt, deploy.prototxt and solver.prototxt in ``out_dir``.
    A file there with other contents (a net edited by hand) is replaced only
    with ``force``."""
    from google.protobuf import text_format

    from .atomic import atomic_folder, check_replaceable, signals_deferred, write_text

    # As released, the solver names its files relative to its own folder.
    texts = {name: f"# {spec.name()}: generated by caffedsd squeezenet\n" + text_format.MessageToString(message)
             for name, message in (("train_val.prototxt", spec.net("train_val")),
                                   ("deploy.prototxt", spec.net("deploy")), ("solver.prototxt", spec.solver()))}
    for name, text in texts.items():
        path = Path(out_dir) / name
        check_replaceable(path)
        if not force and path.is_file() and path.read_bytes() != text.encode():
            raise SqueezeNetError(f"{path}: exists with other contents than this generator writes; give --force "
                                  "to replace it, or another -o")
    # Into an existing folder, file by file: a Ctrl-C or SIGTERM between
    # them would leave one net's train_val beside another's deploy and solver.
    with atomic_folder(out_dir) as folder, signals_deferred():
        for name, text in texts.items():
            write_text(folder / name, text)
    return [Path(out_dir) / name for name in texts]
