"""`compress`/`decompress`: a caffemodel to and from a .dcz file, and the
per-layer size table. The coding itself is in compression.py."""
import zlib
from pathlib import Path

import numpy as np

from .atomic import atomic_open, atomic_path, check_output
from .caffe_proto import LayerParameter
from .caffemodel import new_caffemodel, read_caffemodel
from .compression import EncodedBlob, FormatError, decode_blob, encode_blob, pack, unpack
from .errors import InputError
from .layers import PRUNABLE_TYPES
from .maskfile import masks_for

# The paper's relative-index widths: 8 bits in conv layers, 5 in fc layers.
DEFAULT_INDEX_BITS = {"conv": 8, "fc": 5}


def layer_kind(layer_type):
    return "fc" if layer_type == "InnerProduct" else "conv"


def parse_bits(text, what="--bits"):
    """'6' -> {'conv': 6, 'fc': 6}; 'conv=8,fc=5' -> {'conv': 8, 'fc': 5}."""
    text = str(text).strip()
    try:
        if "=" not in text:
            values = {"conv": int(text), "fc": int(text)}
        else:
            values = {}
            for item in text.split(","):
                key, _, value = item.partition("=")
                key = key.strip()
                if key not in ("conv", "fc"):
                    raise InputError(f"{what} {text!r}: keys are conv and fc")
                values[key] = int(value)
    except ValueError:
        raise InputError(f"{what} {text!r}: expected N or conv=N,fc=M with whole numbers") from None
    for key, value in values.items():
        if not 1 <= value <= 16:
            raise InputError(f"{what} {text!r}: {key}={value} is outside 1..16")
    return values


def compress(weights, output, bits, index_bits=None, masks=None, force=False):
    """Write ``weights`` as a .dcz file; returns the size table rows."""
    model = read_caffemodel(weights)
    check_output(output, inputs=[weights, masks], force=force)
    index_bits = dict(DEFAULT_INDEX_BITS, **(index_bits or {}))
    maskset = masks_for(model, masks)
    keep_masks = maskset.per_layer() if maskset else {}
    layers_meta, sections, rows = [], [], []

    def section(data):
        sections.append(bytes(data))
        return len(sections) - 1

    for layer in model.layers:
        if not layer.blobs:
            continue
        meta = {"name": layer.name, "param": section(layer.param.SerializeToString()), "blobs": []}
        dense = sum(int(b.data.size) * 4 for b in layer.blobs)
        row = {"layer": layer.name, "dense": dense, "pruned": 0, "quantized": 0, "huffman": 0}
        for index, blob in enumerate(layer.blobs):
            data = np.asarray(blob.data, dtype=np.float32)
            if index == 0 and layer.type in PRUNABLE_TYPES:
                kind = layer_kind(layer.type)
                keep = keep_masks.get(layer.name)
                keep = (data != 0) if keep is None else (keep & (data != 0))
                encoded = encode_blob(data, keep, bits[kind], index_bits[kind])
                meta["blobs"].append({
                    "kind": "dc", "shape": list(encoded.shape), "bits": encoded.bits,
                    "index_bits": encoded.index_bits, "entries": encoded.entries, "kept": encoded.kept,
                    "codebook": section(encoded.codebook.astype("<f4").tobytes()),
                    # Code-length tables are mostly zeros for small layers: zlib them.
                    "value_lengths": section(zlib.compress(encoded.value_lengths.astype(np.uint8).tobytes(), 9)),
                    "gap_lengths": section(zlib.compress(encoded.gap_lengths.astype(np.uint8).tobytes(), 9)),
                    "values": section(encoded.value_stream), "value_bits": encoded.value_bits,
                    "gaps": section(encoded.gap_stream), "gap_bits": encoded.gap_bits})
                codebook = encoded.codebook.size * 4
                tables = len(sections[meta["blobs"][-1]["value_lengths"]]) + \
                    len(sections[meta["blobs"][-1]["gap_lengths"]])
                row["pruned"] += encoded.kept * 4 + (encoded.entries * encoded.index_bits + 7) // 8
                row["quantized"] += (encoded.entries * (encoded.bits + encoded.index_bits) + 7) // 8 + codebook
                row["huffman"] += len(encoded.value_stream) + len(encoded.gap_stream) + codebook + tables
                row["bits"] = f"{encoded.bits}/{encoded.index_bits}"
            else:
                meta["blobs"].append({"kind": "raw", "shape": list(data.shape),
                                      "data": section(data.astype("<f4").tobytes())})
                for stage in ("pruned", "quantized", "huffman"):
                    row[stage] += data.size * 4
        layers_meta.append(meta)
        rows.append(row)
    with atomic_open(output) as handle:
        handle.write(pack({"format": "caffedsd-dcz", "name": model.name, "source": Path(weights).name,
                           "layers": layers_meta}, sections))
    return rows


def _table(data):
    return np.frombuffer(zlib.decompress(data), dtype=np.uint8).astype(np.int64)


def read_dcz(path):
    """[(LayerParameter, [arrays])] and the net name of a .dcz file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        header, sections = unpack(path.read_bytes())
        layers = []
        for meta in header["layers"]:
            param = LayerParameter.FromString(sections[meta["param"]])
            arrays = []
            for blob in meta["blobs"]:
                if blob["kind"] == "raw":
                    arrays.append(np.frombuffer(sections[blob["data"]], dtype="<f4").reshape(blob["shape"]).copy())
                else:
                    arrays.append(decode_blob(EncodedBlob(
                        tuple(blob["shape"]), blob["bits"], blob["index_bits"],
                        np.frombuffer(sections[blob["codebook"]], dtype="<f4"),
                        _table(sections[blob["value_lengths"]]), _table(sections[blob["gap_lengths"]]),
                        blob["entries"], blob["kept"], sections[blob["values"]], blob["value_bits"],
                        sections[blob["gaps"]], blob["gap_bits"])))
            layers.append((param, arrays))
    except FormatError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (KeyError, ValueError, IndexError, TypeError, zlib.error) as exc:
        raise InputError(f"{path}: corrupted .dcz content ({exc})") from None
    return layers, header.get("name", "")


def decompress(path, output, model=None, force=False, allow_python_layers=False):
    """Write the caffemodel a .dcz file holds (weights = the quantized values);
    with ``model``, the prototxt must fit it, or nothing is written."""
    check_output(output, inputs=[path], force=force)
    net = None
    if model is not None:
        from .caffe_proto import read_net_prototxt

        net = read_net_prototxt(model, allow_python_layers)
    layers, name = read_dcz(path)
    with atomic_path(output) as tmp:
        new_caffemodel(tmp, layers, name=name)
        if net is not None:
            from .netcheck import check_pair

            check_pair(net, model, read_caffemodel(tmp))
    return layers
