"""Caffe's protobuf schema, without importing pycaffe.

The message classes come from stock BVLC caffe.proto (shipped in proto/, with
its descriptor set compiled by protoc) loaded into a private descriptor pool:
pycaffe's own caffe_pb2 registers the same names in protobuf's default pool,
and a fork's differing caffe.proto must not clash with ours in one process.
Fields a fork adds survive a parse/serialize round trip as unknown fields.
"""
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from .atomic import check_input
from .errors import InputError

_PROTO_DIR = Path(__file__).with_name("proto")


def _message_classes():
    files = descriptor_pb2.FileDescriptorSet.FromString((_PROTO_DIR / "caffe.desc").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:
        pool.Add(file_proto)

    def cls(name):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe." + name))

    return {name: cls(name) for name in (
        "NetParameter", "LayerParameter", "V1LayerParameter", "BlobProto", "BlobShape",
        "ParamSpec", "SolverParameter", "NetState")}


_CLASSES = _message_classes()
NetParameter = _CLASSES["NetParameter"]
LayerParameter = _CLASSES["LayerParameter"]
V1LayerParameter = _CLASSES["V1LayerParameter"]
BlobProto = _CLASSES["BlobProto"]
BlobShape = _CLASSES["BlobShape"]
ParamSpec = _CLASSES["ParamSpec"]
SolverParameter = _CLASSES["SolverParameter"]
NetState = _CLASSES["NetState"]

# V1's enum layer types and the V2 type strings Caffe's upgrade_proto maps them to.
V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V1 fields that upgrade_v1_layer maps by hand; every other set field is copied
# to the V2 field of the same name and type.
_V1_SPECIAL = {"type", "param", "blob_share_mode", "blobs_lr", "weight_decay", "blobs", "layer"}


def _is_repeated(field):
    # protobuf 5.28+ has is_repeated; `label` is gone in 7.
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == field.LABEL_REPEATED


# V1 data layers' parameters whose scale, mean_file, crop_size and mirror
# Caffe moves into transform_param (UpgradeNetDataTransformation) before it
# upgrades the layer; a V2 layer keeps them where Caffe ignores them.
_V1_TRANSFORMED = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def upgrade_v1_layer(v1, where="layer"):
    """A V2 LayerParameter equivalent to V1LayerParameter ``v1``, blobs left
    out, as Caffe's upgrade_proto makes it."""
    if v1.HasField("layer"):
        raise InputError(f"{where}: V0 layer layout (pre-2014); upgrade it first with Caffe's "
                         "upgrade_net_proto_text (a prototxt) or upgrade_net_proto_binary (a caffemodel)")
    out = LayerParameter()
    # NONE: no type, or a fork's number protobuf keeps aside. Caffe's
    # UpgradeV1LayerType gives it no type (""), and loads such a layer's
    # weights by name, as any other's.
    type_name = V1LayerParameter.LayerType.Name(v1.type)
    if type_name != "NONE":
        out.type = V1_TYPE_NAMES[type_name]
    v2_fields = LayerParameter.DESCRIPTOR.fields_by_name
    for field, value in v1.ListFields():
        if field.name in _V1_SPECIAL:
            continue
        target = v2_fields.get(field.name)
        if target is None or target.type != field.type or (
                field.message_type is not None and target.message_type.full_name != field.message_type.full_name):
            raise InputError(f"{where}: V1 field {field.name} has no V2 equivalent")
        values = value if _is_repeated(field) else [value]
        if field.type == field.TYPE_STRING and any(isinstance(v, bytes) for v in values):
            # proto2 strings may hold any bytes; a V2 string field takes only text.
            raise InputError(f"{where}: V1 field {field.name} is not UTF-8 text")
        if _is_repeated(field):
            getattr(out, field.name).extend(value)
        elif field.message_type is not None:
            getattr(out, field.name).CopyFrom(value)
        else:
            setattr(out, field.name, value)
    count = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(count):
        spec = out.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    if type_name in _V1_TRANSFORMED:
        data_param = getattr(out, _V1_TRANSFORMED[type_name])
        for name in _TRANSFORM_FIELDS:
            if data_param.HasField(name):
                setattr(out.transform_param, name, getattr(data_param, name))
                data_param.ClearField(name)
    return out


def parse_prototxt(path, message_class):
    """Parse the text-format file ``path`` into a new ``message_class``."""
    path = check_input(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:  # unreadable (permissions), or gone since check_input
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    # protobuf's text format is UTF-8, whatever the locale. Other bytes in
    # a file of text are kept as they are: in a comment (Caffe skips them)
    # they do no harm; in a string, setting the field refuses them.
    text = raw.decode("utf-8", errors="surrogateescape")
    if "\0" in text and any("\udc80" <= char <= "\udcff" for char in text):
        raise InputError(f"{path}: not a text prototxt (binary data; is it a caffemodel?)")
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        if "surrogates not allowed" in str(exc):
            raise InputError(f"{path}:{exc.GetLine()}:{exc.GetColumn()}: a name or path that is not UTF-8 text "
                             "(protobuf's text format is UTF-8, and so are caffemodels' names); save the file as "
                             "UTF-8") from None
        raise InputError(f"{path}:{exc}".replace("\n", " ")) from None
    return message


def read_net_prototxt(path, allow_python_layers=False):
    """A net prototxt as a V2 NetParameter (V1 ``layers`` are upgraded).

    ``type: "Python"`` layers run arbitrary code when Caffe loads the net, so
    they are refused unless ``allow_python_layers``.
    """
    net = parse_prototxt(path, NetParameter)
    if len(net.layers):
        if len(net.layer):
            raise InputError(f"{path}: mixes V1 'layers' and V2 'layer' entries")
        upgraded = [upgrade_v1_layer(v1, where=f"{path}: layer {v1.name or v1.layer.name!r}")
                    for v1 in net.layers]
        del net.layers[:]
        net.layer.extend(upgraded)
    return _checked_net(net, path, allow_python_layers)


def inline_net(message, where, allow_python_layers=False):
    """A copy of a net given inside a solver (``net_param`` and the like),
    checked as read_net_prototxt checks a file; ``where`` names it."""
    net = NetParameter()
    net.CopyFrom(message)
    if len(net.layers):
        # Caffe upgrades the V1 layout only in nets it reads from files: an
        # inline one would be built with none of these layers.
        raise InputError(f"{where}: V1 'layers' entries, which Caffe does not upgrade in a solver; "
                         "write them as V2 'layer', or put the net in a file")
    return _checked_net(net, where, allow_python_layers)


def _checked_net(net, where, allow_python_layers):
    if not len(net.layer):
        raise InputError(f"{where}: net has no layers")
    both = [layer.name for layer in net.layer if len(layer.include) and len(layer.exclude)]
    if both:  # Caffe's FilterNet aborts the process on it
        raise InputError(f"{where}: layer(s) {', '.join(repr(name) for name in both)} give both include and exclude "
                         "rules, which Caffe refuses (\"Specify either include rules or exclude rules; not both\")")
    if not allow_python_layers:
        python = [layer.name for layer in net.layer if layer.type == "Python"]
        if python:
            raise InputError(f"{where}: Python layer(s) {', '.join(python)} would run arbitrary code; "
                             "pass --allow-python-layers if you trust this file")
    return net
