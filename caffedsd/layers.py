"""What caffedsd knows about Caffe layer types, and shared parameters."""
from dataclasses import dataclass

from .errors import InputError

# Blob 0 of these is a weight tensor that pruning may touch. Never biases,
# BatchNorm statistics, Scale/PReLU factors or any other blob.
PRUNABLE_TYPES = frozenset({"Convolution", "Deconvolution", "InnerProduct"})

# Layer types that own learnable blobs in stock Caffe. Used to tell which
# layers of a prototxt expect weights from a caffemodel.
PARAM_TYPES = PRUNABLE_TYPES | {"BatchNorm", "Scale", "Bias", "PReLU", "Embed", "RNN", "LSTM"}


def expected_blob_count(layer_param):
    """How many blobs Caffe gives a prototxt layer, or None where caffedsd
    does not know."""
    kind = layer_param.type
    if kind in ("Convolution", "Deconvolution"):
        return 2 if layer_param.convolution_param.bias_term else 1
    if kind == "InnerProduct":
        return 2 if layer_param.inner_product_param.bias_term else 1
    if kind == "BatchNorm":
        return 3
    # ScaleLayer/BiasLayer::LayerSetUp: a second bottom gives the factor (the
    # bias), so it is no blob; Scale's bias_term is a blob either way.
    one_bottom = len(layer_param.bottom) < 2
    if kind == "Scale":
        return int(one_bottom) + int(layer_param.scale_param.bias_term)
    if kind == "Bias":
        return int(one_bottom)
    return None


def expects_blobs(layer_param):
    """Whether a prototxt layer owns learnable blobs."""
    count = expected_blob_count(layer_param)
    return layer_param.type in PARAM_TYPES if count is None else count > 0


@dataclass(frozen=True)
class Target:
    """A prunable weight blob: blob 0 of ``layers`` (several when shared)."""

    owner: str
    layers: tuple
    shape: tuple
    param_name: str = ""


def prunable_targets(model):
    """The model's prunable blobs, one Target per shared group, in layer order."""
    groups = {}
    for layer in model.layers:
        if layer.type not in PRUNABLE_TYPES or not layer.blobs:
            continue
        param_name = layer.param_names[0]
        key = ("param", param_name) if param_name else ("layer", layer.name)
        shape = layer.blobs[0].shape
        if key in groups:
            first = groups[key]
            if first.shape != shape:
                raise InputError(f"{model.path}: layers {first.owner!r} and {layer.name!r} share param "
                                 f"{param_name!r} but their weights have shapes {list(first.shape)} "
                                 f"and {list(shape)} (share_mode PERMISSIVE: caffedsd prunes shared weights "
                                 "of one shape only)")
            groups[key] = Target(first.owner, first.layers + (layer.name,), shape, param_name)
        else:
            groups[key] = Target(layer.name, (layer.name,), shape, param_name)
    return list(groups.values())
