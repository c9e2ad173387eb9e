"""Masks beside the model, in HDF5.

``pruned.caffemodel`` keeps its masks in ``pruned.masks.h5``. Masks never go
inside the caffemodel: stock Caffe would refuse the extra blobs.

Layout:
  /            attrs: format="caffedsd-masks", format_version, fingerprint,
               structure (JSON), criterion, seed, amounts (JSON),
               source_sha256, caffedsd_version
  /masks/<layer name, '/' escaped as %2F>
               bool dataset shaped like the layer's blob 0 (True = kept);
               attrs: layer, blob, shared_by (JSON list of layers using it)

The fingerprint is the sha256 of the model's structure (names, types and blob
shapes of every layer with blobs), so masks can't be applied to another model.
"""
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np

from . import __version__
from .atomic import atomic_path
from .errors import InputError

FORMAT = "caffedsd-masks"
FORMAT_VERSION = 1


def masks_path_for(weights_path):
    """Where the masks of ``X.caffemodel`` live: ``X.masks.h5``."""
    path = Path(weights_path)
    stem = path.name[:-len(".caffemodel")] if path.name.endswith(".caffemodel") else path.name
    return path.with_name(stem + ".masks.h5")


def structure_fingerprint(structure):
    text = json.dumps(structure, separators=(",", ":"), sort_keys=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, eq=False)
class MaskSet:
    """Masks of one model's blob-0 weights, keyed by the owning layer.

    ``shared_by[owner]`` lists every layer that uses the owner's blob (through
    ``param { name }``), the owner first; they share the one mask.
    """

    masks: dict
    shared_by: dict
    structure: list
    meta: dict = field(default_factory=dict)

    @property
    def fingerprint(self):
        return structure_fingerprint(self.structure)

    def per_layer(self):
        """{layer name: mask} with every sharing layer listed."""
        return {layer: self.masks[owner] for owner, layers in self.shared_by.items() for layer in layers}

    def check_fits(self, structure, what):
        """Raise InputError unless these masks were made for ``structure``."""
        if structure_fingerprint(structure) == self.fingerprint:
            return
        mine = {name: (kind, shapes) for name, kind, shapes in self.structure}
        theirs = {name: (kind, shapes) for name, kind, shapes in structure}
        diffs = [f"{n} missing" for n in mine if n not in theirs]
        diffs += [f"{n} differs" for n in mine if n in theirs and mine[n] != theirs[n]]
        diffs += [f"{n} not in masks' model" for n in theirs if n not in mine]
        raise InputError(f"{what}: masks were made for another model ({'; '.join(diffs[:5]) or 'order differs'})")


def save_masks(path, maskset):
    """Write ``maskset`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["format"] = FORMAT
            h5.attrs["format_version"] = FORMAT_VERSION
            h5.attrs["fingerprint"] = maskset.fingerprint
            h5.attrs["structure"] = json.dumps(maskset.structure)
            h5.attrs["caffedsd_version"] = __version__
            for key, value in maskset.meta.items():
                h5.attrs[key] = json.dumps(value)
            group = h5.create_group("masks")
            for owner, mask in maskset.masks.items():
                mask = np.asarray(mask, dtype=bool)
                # gzip level 1: a quarter of the size or less, at ~150 MB/s.
                ds = group.create_dataset(quote(owner, safe=""), data=mask, chunks=True if mask.size else None,
                                          compression="gzip" if mask.size else None,
                                          compression_opts=1 if mask.size else None)
                ds.attrs["layer"] = owner
                ds.attrs["blob"] = 0
                ds.attrs["shared_by"] = json.dumps(list(maskset.shared_by[owner]))


def load_masks(path):
    """Read a masks file. Raises InputError naming the file on anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such masks file")
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") != FORMAT:
                raise InputError(f"{path}: not a caffedsd masks file")
            version = int(h5.attrs.get("format_version", 0))
            if version > FORMAT_VERSION:
                raise InputError(f"{path}: masks format {version} is newer than this caffedsd reads")
            structure = json.loads(h5.attrs["structure"])
            stored_fingerprint = str(h5.attrs["fingerprint"])
            meta = {key: json.loads(h5.attrs[key]) for key in h5.attrs
                    if key not in ("format", "format_version", "fingerprint", "structure", "caffedsd_version")}
            masks, shared_by = {}, {}
            for ds in h5["masks"].values():
                owner = str(ds.attrs["layer"])
                masks[owner] = np.asarray(ds[()], dtype=bool)
                shared_by[owner] = tuple(json.loads(ds.attrs["shared_by"]))
    except (OSError, KeyError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: not a readable masks file ({exc})") from None
    maskset = MaskSet(masks, shared_by, structure, meta)
    if stored_fingerprint != maskset.fingerprint:
        raise InputError(f"{path}: fingerprint does not match the stored structure (file edited?)")
    return maskset


def masks_for(model, masks_path=None, required=False):
    """The masks of ``model``: from ``masks_path``, else from beside its weights
    file when there; None when there are none and none are required. Raises
    InputError when they were made for another model."""
    path = Path(masks_path) if masks_path else masks_path_for(model.path)
    if masks_path is None and not path.exists():
        if required:
            raise InputError(f"{path}: no masks beside {model.path} (give --masks)")
        return None
    maskset = load_masks(path)
    maskset.check_fits(model.structure(), path)
    return maskset
