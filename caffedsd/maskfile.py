"""Masks beside the model, in HDF5.

``pruned.caffemodel`` keeps its masks in ``pruned.masks.h5``. Masks never go
inside the caffemodel: stock Caffe would refuse the extra blobs.

Layout:
  /            attrs: format="caffedsd-masks", format_version, fingerprint,
               structure (JSON), criterion, seed, amounts (JSON),
               source_sha256, caffedsd_version
  /masks       attrs: model_sha256
  /masks/<layer name, percent-encoded: every byte but letters, digits and
          "_.-~" as %XX, and "." and ".." wholly, which HDF5 takes for paths>
               bool dataset shaped like the layer's blob 0 (True = kept);
               attrs: layer, blob, shared_by (JSON list of layers using it)

The fingerprint is the sha256 of the model's structure (names, types and blob
shapes of every layer with blobs), so masks can't be applied to another model.
model_sha256 is the sha256 of the caffemodel file written beside them: a
model and its masks are two files, renamed into place one after the other
(masks first), so a run cut short between the renames, or a model replaced
by hand, leaves masks beside a model of the same structure they were not
made for; read from beside the model, they are refused (masks_for). Files
written before it was kept have none, and are taken as they are. It is kept
on the masks group, not the root: earlier caffedsd takes every root
attribute it does not know for metadata, and would copy it into the masks
it writes for another model.
"""
import contextlib
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np

from . import __version__
from .atomic import atomic_hdf5, atomic_path, atomic_paths, check_input, check_output, same_path
from .errors import HDF5_DAMAGE, InputError

FORMAT = "caffedsd-masks"
FORMAT_VERSION = 1
# The root attributes save_masks writes of its own; the others are the meta.
_RESERVED = ("format", "format_version", "fingerprint", "structure", "caffedsd_version")
_MAX_ATTR_BYTES = 1 << 26


def masks_path_for(weights_path):
    """Where the masks of ``X.caffemodel`` live: ``X.masks.h5``."""
    path = Path(weights_path)
    stem = path.name[:-len(".caffemodel")] if path.name.endswith(".caffemodel") else path.name
    return path.with_name(stem + ".masks.h5")


def masks_read_for(weights_path, masks_path=None):
    """The masks file a command reads for ``weights_path``: ``masks_path``
    when given, else the one beside the weights if it is there; None for
    none. What an output must not replace without --force."""
    if masks_path:
        return Path(masks_path)
    beside = masks_path_for(weights_path) if weights_path else None
    # os.path's: a name too long for the file system is not there (Path's raise).
    return beside if beside is not None and os.path.exists(beside) else None


def _masks_owners(masks):
    """The models beside ``masks`` (a path X.masks.h5) whose masks file it
    is: X.caffemodel where it is a file; X where it is a file and ``masks``
    holds masks written with it or recording no model (a file X of notes,
    or a folder, is no model of masks)."""
    masks = Path(masks)
    stem = masks.name[:-len(".masks.h5")] if masks.name.endswith(".masks.h5") else ""
    if not stem:
        return []
    model, bare = masks.with_name(stem + ".caffemodel"), masks.with_name(stem)
    owners = [model] if os.path.isfile(model) else []
    if os.path.isfile(bare) and os.path.isfile(masks) and _masks_of(masks, bare):
        owners.append(bare)
    return owners


def _masks_of(masks, model):
    """Whether the file ``masks`` holds masks written with ``model``, or
    recording no model."""
    from .caffemodel import file_sha256

    try:
        with h5py.File(masks, "r") as h5:
            group = h5.get("masks")
            return isinstance(group, h5py.Group) and _model_sha256(masks, group) in (None, file_sha256(model))
    except (*HDF5_DAMAGE, InputError):
        return False


def _sharing_masks(output):
    """The other model whose masks file is also ``output``'s, or None."""
    return next((owner for owner in _masks_owners(masks_path_for(output)) if not same_path(owner, output)), None)


@contextlib.contextmanager
def atomic_unmasked_path(output):
    """atomic_path for a caffemodel written without masks. The masks file
    of the model it replaces goes, just after the rename: left there, the
    next prune, verify or compress would take it for this model's. Removed
    before, a run cut short between the two would leave the old model
    without its masks, which nothing could tell; after, what is left is
    masks written with another model, which masks_for refuses. Masks that
    do not record their model could not be told from this one's: those go
    just before."""
    masks = masks_path_for(output)
    theirs = _sharing_masks(output) is None
    with atomic_path(output) as tmp:
        yield tmp
        if theirs and masks.exists() and _recorded_model(masks) is None:
            masks.unlink(missing_ok=True)
    if theirs:
        masks.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_model(output, maskset=None):
    """atomic_path for a caffemodel with its masks, ``maskset`` (None: none,
    atomic_unmasked_path): yields the model's temporary; once the block has
    written it whole, the masks are written as its own (save_masks_of),
    and both are renamed into place together (atomic_paths)."""
    if maskset is None:
        with atomic_unmasked_path(output) as tmp:
            yield tmp
        return
    with atomic_paths(output, masks_path_for(output)) as (tmp, masks_tmp):
        yield tmp
        save_masks_of(masks_tmp, tmp, maskset)


def check_not_masks_of_another(output):
    """Refuse an output (a file or folder) named as the masks file of a
    model beside it: written there, it would leave that model with a masks
    file every command refuses, and its masks lost."""
    if owners := _masks_owners(output):
        raise InputError(f"{output}: is the masks file of {owners[0]} beside it, which this output would replace; "
                         "give the output another name")


def check_model_outputs(output, inputs, force=False, with_masks=True):
    """Refuse to write the caffemodel ``output``, and with ``with_masks`` its
    masks beside it, where either would replace one of ``inputs``, and an
    output whose masks file is another model's, or that is one."""
    masks = masks_path_for(output)
    owner = _sharing_masks(output)
    if owner is not None:  # both would read and write the one masks file, each taking it for its own
        raise InputError(f"{output}: its masks file would be {masks}, which is that of {owner} beside it; "
                         f"name the output {owner.name}, or another name")
    for path in (output, masks) if with_masks else (output,):
        check_output(path, inputs=inputs, force=force)
    check_not_masks_of_another(output)  # an input's masks too, with --force


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
    # As read from a file: the sha256 of the caffemodel written beside it
    # (None: not recorded). Masks made anew have none until saved.
    model_sha256: str = None

    def __post_init__(self):
        # Masks are data: read-only views in dicts of its own, so that no
        # hook or stage holding them can change what another one reads.
        masks = {}
        for owner, mask in self.masks.items():
            masks[owner] = np.asarray(mask).view()
            masks[owner].flags.writeable = False
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "shared_by", dict(self.shared_by))
        self._check()

    def _check(self):
        """What save_masks would write and load_masks refuse: checked here,
        where the masks set is made, not found when it is read back."""
        shapes = {name: tuple(shapes[0]) for name, _, shapes in self.structure if shapes}
        if set(self.shared_by) != set(self.masks):
            raise InputError(f"masks of {sorted(self.masks)} but shared_by of {sorted(self.shared_by)}: "
                             "each mask needs the layers that use it, and only those")
        for owner, mask in self.masks.items():
            if owner not in shapes or any(layer not in shapes for layer in self.shared_by[owner]):
                raise InputError(f"mask of {owner!r}: its layers {list(self.shared_by[owner])} are not all layers "
                                 "with blobs of the model structure")
            if mask.dtype != bool or mask.shape != shapes[owner]:
                raise InputError(f"mask of {owner!r} is {mask.dtype} {list(mask.shape)}, not a boolean "
                                 f"{list(shapes[owner])} (its blob 0)")
        if reserved := sorted(set(self.meta) & set(_RESERVED)):
            raise InputError(f"meta {', '.join(reserved)}: caffedsd's own attributes of a masks file, not metadata")

    @property
    def fingerprint(self):
        return structure_fingerprint(self.structure)

    def per_layer(self):
        """{layer name: mask} with every sharing layer listed."""
        return {layer: self.masks[owner] for owner, layers in self.shared_by.items() for layer in layers}

    def without(self, layers):
        """These masks less those of ``layers`` (with every layer sharing
        their blob); None where none are left."""
        owners = [owner for owner, sharing in self.shared_by.items() if not set(sharing) & set(layers)]
        if not owners:
            return None
        return MaskSet({owner: self.masks[owner] for owner in owners},
                       {owner: self.shared_by[owner] for owner in owners}, self.structure, dict(self.meta))

    def check_fits(self, structure, what, remedy=None):
        """Raise InputError unless these masks were made for ``structure``;
        ``remedy`` ends its message."""
        if structure_fingerprint(structure) == self.fingerprint:
            return
        mine = {name: (kind, shapes) for name, kind, shapes in self.structure}
        theirs = {name: (kind, shapes) for name, kind, shapes in structure}
        diffs = [f"{n} missing" for n in mine if n not in theirs]
        diffs += [f"{n} differs" for n in mine if n in theirs and mine[n] != theirs[n]]
        diffs += [f"{n} not in masks' model" for n in theirs if n not in mine]
        raise InputError(f"{what}: masks were made for another model ({'; '.join(diffs[:5]) or 'order differs'})"
                         + (f"; {remedy}" if remedy else ""))


def _fixed(text):
    return np.bytes_(text.encode("utf-8"))


def _dataset_name(layer):
    """The mask dataset's name for ``layer`` (readers go by its 'layer'
    attribute): HDF5 takes "/" for a path, and "." for the group itself."""
    name = quote(layer, safe="")
    return name.replace(".", "%2E") if name in (".", "..") else name


# HDF5 1.8's object format and later: attributes over 64 KB (a big net's
# structure). Not 'latest': h5py 3.16's HDF5 2.0 then writes a datatype
# message no HDF5 1.x reads, so an older h5py could not read the masks.
_LIBVER = ("v108", "v110")


def save_masks(path, maskset, model_sha256):
    """Write ``maskset`` to ``path`` atomically, as the masks of the
    caffemodel whose file's sha256 is ``model_sha256``."""
    with atomic_hdf5(path, libver=_LIBVER) as h5:
        _fill(h5, maskset, model_sha256)


def save_masks_of(path, model_path, maskset):
    """Write ``maskset`` to ``path`` as the masks of the caffemodel
    ``model_path`` (whole already; a temporary, perhaps): with that file's
    structure, which may hold more layers than the masks' model (those of
    phase TEST only), and its sha256."""
    from .caffemodel import file_sha256, read_caffemodel

    written = read_caffemodel(model_path).structure()
    save_masks(path, MaskSet(maskset.masks, maskset.shared_by, written, dict(maskset.meta)), file_sha256(model_path))


def masks_file_bytes(maskset):
    """The size of the file save_masks writes of ``maskset``: its masks are
    compressed, so only writing them (in memory) tells it."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", libver=_LIBVER) as h5:
        _fill(h5, maskset, "0" * 64)
    return buffer.getbuffer().nbytes


def _fill(h5, maskset, model_sha256):
    # Text goes in fixed-length strings, not variable-length ones: those
    # live in HDF5's global heap, and a damaged heap makes the HDF5
    # library loop forever on read.
    h5.attrs["format"] = _fixed(FORMAT)
    h5.attrs["format_version"] = FORMAT_VERSION
    h5.attrs["fingerprint"] = _fixed(maskset.fingerprint)
    h5.attrs["structure"] = _fixed(json.dumps(maskset.structure))
    h5.attrs["caffedsd_version"] = _fixed(__version__)
    for key, value in maskset.meta.items():
        h5.attrs[key] = _fixed(json.dumps(value))
    group = h5.create_group("masks")
    group.attrs["model_sha256"] = _fixed(model_sha256)
    for owner, mask in maskset.masks.items():
        if owner.endswith("\0"):  # a fixed-length string loses it, and the masks their layer
            raise InputError(f"layer {owner!r}: a name that ends in a NUL character cannot be kept in a masks "
                             "file; rename the layer")
        mask = np.asarray(mask, dtype=bool)
        # gzip level 1: a quarter of the size or less, at ~150 MB/s. (A
        # weight blob of no axes, one value, takes no chunks.)
        packed = mask.ndim > 0 and mask.size > 0
        ds = group.create_dataset(_dataset_name(owner), data=mask, chunks=True if packed else None,
                                  compression="gzip" if packed else None, compression_opts=1 if packed else None)
        ds.attrs["layer"] = _fixed(owner)
        ds.attrs["blob"] = 0
        ds.attrs["shared_by"] = _fixed(json.dumps(list(maskset.shared_by[owner])))


def _text(path, value, what):
    """An HDF5 attribute that must be text (h5py gives str or bytes)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path}: {what} is not UTF-8 text") from None
    if not isinstance(value, str):
        raise InputError(f"{path}: {what} is not text")
    return value


def _attr(path, obj, key, default=None):
    """Attribute ``key`` of an HDF5 object, or ``default`` when absent. Its
    shape and storage are checked first: a damaged file can declare an
    attribute of any size, and reading that would run for ages."""
    if key not in obj.attrs:
        return default
    aid = obj.attrs.get_id(key)
    if aid.shape not in ((), (1,)) or aid.get_storage_size() > _MAX_ATTR_BYTES:
        raise InputError(f"{path}: attribute {key!r} of {obj.name} is not a single value")
    value = obj.attrs[key]
    # A one-element array (what some HDF5 writers make of a value) is that value.
    return value[0] if aid.shape == (1,) else value


def _json(path, value, what):
    try:
        return json.loads(_text(path, value, what))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: {what} is not valid JSON ({exc.msg})") from None


def _is_name_list(value):
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _checked_structure(path, structure):
    """[[name, type, [[dims of each blob]]]] or InputError."""
    ok = isinstance(structure, list) and all(
        isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[1], str)
        and isinstance(row[2], list) and all(
            isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape) for shape in row[2])
        for row in structure)
    if not ok:
        raise InputError(f"{path}: the stored model structure is malformed")
    return structure


def _read_masks(path, h5):
    if _text(path, _attr(path, h5, "format", ""), "attribute 'format'") != FORMAT:
        raise InputError(f"{path}: not a caffedsd masks file")
    version = _attr(path, h5, "format_version", 0)
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)):
        raise InputError(f"{path}: attribute 'format_version' is not a whole number")
    if int(version) > FORMAT_VERSION:
        raise InputError(f"{path}: masks format {int(version)} is newer than this caffedsd reads")
    if "structure" not in h5.attrs or "fingerprint" not in h5.attrs:
        raise InputError(f"{path}: no model structure or fingerprint stored: not a complete masks file")
    structure = _checked_structure(path, _json(path, _attr(path, h5, "structure"), "attribute 'structure'"))
    stored_fingerprint = _text(path, _attr(path, h5, "fingerprint"), "attribute 'fingerprint'")
    meta = {key: _json(path, _attr(path, h5, key), f"attribute {key!r}") for key in h5.attrs
            if key not in _RESERVED}
    group = h5.get("masks")
    if not isinstance(group, h5py.Group):
        raise InputError(f"{path}: no 'masks' group")
    model_sha256 = _model_sha256(path, group)
    shapes = {name: shapes[0] for name, _, shapes in structure if shapes}
    masks, shared_by = {}, {}
    for key in group:
        try:
            ds = group[key]
        except KeyError as exc:  # h5py's get() says None, as for no such name
            raise InputError(f"{path}: masks/{key} cannot be opened ({exc.args[0] if exc.args else exc}): damaged, "
                             f"or written by a newer HDF5 than this h5py's {h5py.version.hdf5_version}") from None
        if not isinstance(ds, h5py.Dataset):
            raise InputError(f"{path}: masks/{key} is not a dataset")
        owner = _text(path, _attr(path, ds, "layer"), f"masks/{key} attribute 'layer'")
        if owner in masks:  # which one a reader took would be a matter of HDF5's link order
            raise InputError(f"{path}: masks/{key} is a second mask of layer {owner!r}")
        sharing = _json(path, _attr(path, ds, "shared_by", b"[]"), f"masks/{key} attribute 'shared_by'")
        if owner not in shapes or not _is_name_list(sharing) or any(n not in shapes for n in sharing):
            raise InputError(f"{path}: masks/{key} names a layer its stored model does not have")
        if ds.dtype.kind not in "biuf" or tuple(ds.shape) != tuple(shapes[owner]):
            raise InputError(f"{path}: mask of {owner!r} is {ds.dtype} {list(ds.shape)}, "
                             f"not a boolean {shapes[owner]}")
        masks[owner] = np.asarray(ds[()], dtype=bool)
        shared_by[owner] = tuple(sharing)
    return MaskSet(masks, shared_by, structure, meta, model_sha256), stored_fingerprint


def load_masks(path):
    """Read a masks file. Raises InputError naming the file on anything wrong."""
    path = check_input(path, "masks file")
    try:
        with h5py.File(path, "r") as h5:
            maskset, stored_fingerprint = _read_masks(path, h5)
    except InputError:
        raise
    except HDF5_DAMAGE as exc:
        raise InputError(f"{path}: not a readable masks file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if stored_fingerprint != maskset.fingerprint:
        raise InputError(f"{path}: fingerprint does not match the stored structure (file edited?)")
    return maskset


def _model_sha256(path, group):
    """The model_sha256 the masks group records (None: none), checked."""
    digest = _attr(path, group, "model_sha256")
    if digest is None:
        return None
    digest = _text(path, digest, "masks attribute 'model_sha256'")
    if not re.fullmatch("[0-9a-f]{64}", digest):
        raise InputError(f"{path}: masks attribute 'model_sha256' is not a sha256 digest")
    return digest


def _recorded_model(path):
    """The model_sha256 the masks file ``path`` records; None where it
    records none, or is not there or not readable as masks (without
    reading the masks themselves)."""
    try:
        with h5py.File(path, "r") as h5:
            group = h5.get("masks")
            return _model_sha256(path, group) if isinstance(group, h5py.Group) else None
    except (*HDF5_DAMAGE, InputError):
        return None


def written_with(maskset, model):
    """Whether ``maskset`` was written beside the file of ``model`` as it
    is now (True where the masks file did not record it)."""
    return maskset.model_sha256 in (None, model.sha256())


def masks_for(model, masks_path=None, required=False, option="--masks"):
    """The masks of ``model``: from ``masks_path``, else from beside its weights
    file when there; None when there are none and none are required. Raises
    InputError when they were made for another model: of another structure,
    or, for those beside it, written with another file than the one there
    (given by name, masks may be used with any model of their structure: a
    model trained on from them, say). ``option``: the command's option that
    names masks, for the messages (None: it has none)."""
    path = Path(masks_path) if masks_path else masks_path_for(model.path)
    if masks_path is None and not os.path.exists(path):  # os.path's: see masks_read_for
        if required:
            raise InputError(f"{path}: no masks beside {model.path}" + (f" (give {option})" if option else ""))
        return None
    maskset = load_masks(path)
    if masks_path is not None:
        maskset.check_fits(model.structure(), path)
        return maskset
    remedy = f"run the command that wrote the pair again, or remove {path.name}"
    maskset.check_fits(model.structure(), path, remedy)
    if not written_with(maskset, model):
        raise InputError(f"{path}: {_NOT_WRITTEN_WITH.format(name=model.path.name)}; {remedy}"
                         + (f", or name it with {option} to use it with this model anyway" if option else ""))
    return maskset


_NOT_WRITTEN_WITH = ("written beside another {name} than the one there now (writing the pair was cut short, "
                     "or the model was replaced since)")


def beside_check(model):
    """For verify: (the masks beside ``model``, or None, and whether they
    are its own: None where there are none, else (ok, detail)). Masks of
    another file or structure than the model's are what verify is for: a
    failed check, not a refusal."""
    path = masks_path_for(model.path)
    if not path.exists():
        return None, None
    maskset = load_masks(path)
    try:
        maskset.check_fits(model.structure(), path)
    except InputError as exc:
        return None, (False, str(exc))
    if maskset.model_sha256 is None:
        return maskset, (True, f"{path.name} does not record its model (an earlier caffedsd's)")
    if not written_with(maskset, model):
        return maskset, (False, f"{path}: {_NOT_WRITTEN_WITH.format(name=model.path.name)}")
    return maskset, (True, f"{path.name} was written beside this {model.path.name}")
