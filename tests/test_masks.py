import warnings

import numpy as np
import pytest

from caffedsd.errors import InputError
from caffedsd.masks import (CRITERIA, apply_mask, compute_mask, keepmax_mask, layer_rng, random_mask, sparsity,
                            std_mask, zero_count)

W = np.array([0.5, -0.1, 0.1, 0.3, -0.2, 0.1], dtype=np.float32)


def test_keepmax_prunes_exact_count_smallest_first():
    # |W| = .5 .1 .1 .3 .2 .1 -> the three 0.1s go.
    assert compute_mask(W, "keepmax", 0.5).tolist() == [True, False, False, True, True, False]


def test_keepmax_breaks_ties_by_lower_index():
    # round(0.34 * 6) = 2 of the three tied 0.1s: indices 1 and 2, not 5.
    assert compute_mask(W, "keepmax", 0.34).tolist() == [True, False, False, True, True, True]


def test_keepmax_zero_and_nearly_all():
    assert compute_mask(W, "keepmax", 0.0).all()
    # round(5.94) = 6, but an amount below 1 keeps one weight: the largest.
    assert compute_mask(W, "keepmax", 0.99).tolist() == [True] + [False] * 5
    assert compute_mask(W, "random", 0.99, rng=np.random.default_rng(1)).sum() == 1


def test_keepmax_keeps_shape():
    w = W.reshape(2, 3)
    mask = compute_mask(w, "keepmax", 0.5)
    assert mask.shape == (2, 3) and mask.dtype == bool


def test_previous_mask_only_shrinks():
    previous = np.array([True, True, True, False, True, True])  # 0.3 was pruned before
    mask = compute_mask(W, "keepmax", 0.5, previous=previous)
    # 3 to prune: the earlier one (index 3) first, then the two lowest 0.1s.
    assert mask.tolist() == [True, False, False, False, True, True]
    # Asking for less than is already pruned keeps the earlier mask.
    assert compute_mask(W, "keepmax", 0.0, previous=previous).tolist() == previous.tolist()


def test_std_criterion():
    # mean 0.1167, std(W) = 0.2339; s = 1 prunes |w| < 0.2339: 0.1, 0.1, 0.2, 0.1.
    assert np.isclose(np.std(W), 0.23393)
    assert compute_mask(W, "std", 1.0).tolist() == [True, False, False, True, False, False]
    assert compute_mask(W, "std", 0.0).all()


def test_std_prunes_a_weight_a_hair_below_the_threshold():
    """s * std is a float64; compared with float32 weights it was rounded
    to float32 first, and a weight 3e-9 below it, equal to it rounded, was
    kept."""
    w = np.array([0.5, -0.25, 0.125, 1.0], dtype=np.float32)
    std = np.std(w.astype(np.float64))
    scale = float(0.25 * (1 + 3e-9) / std)  # a Python float, as the CLI gives
    assert np.float32(scale * std) == np.float32(0.25)  # what the float32 comparison saw
    assert compute_mask(w, "std", scale).tolist() == [True, False, False, True]
    assert compute_mask(w, "std", float(0.25 * (1 - 3e-9) / std)).tolist() == [True, True, False, True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning past float32's range: the largest stays
        assert compute_mask(w, "std", 1e300).tolist() == [False, False, False, True]


def test_float16_and_integer_weights_are_judged_by_their_values():
    """float16 compared the threshold rounded to float16 (0.5 kept where it
    lies below 0.50005); int8's |-128| is -128, so keepmax pruned the
    largest weight first; an unsigned array could not take the scores."""
    from caffedsd.masks import at_least

    assert at_least(np.array([0.5], dtype=np.float16), 0.50005).tolist() == [False]
    assert at_least(np.array([0.5], dtype=np.float16), 0.5).tolist() == [True]
    assert compute_mask(np.array([-128, 1, 2, 3], dtype=np.int8), "keepmax", 0.25).tolist() == [True, False, True, True]
    assert compute_mask(np.array([9, 1, 2, 3], dtype=np.uint8), "keepmax", 0.5,
                        previous=np.array([True, True, False, True])).tolist() == [True, False, False, True]


def test_std_never_empties_a_layer():
    """|w| all 1 have std 1: s = 2 pruned every weight, where keepmax keeps
    one; now the largest stays, the first of equals."""
    w = np.array([1.0, -1.0, 1.0, -1.0], dtype=np.float32)
    assert compute_mask(w, "std", 2.0).tolist() == [True, False, False, False]
    w = np.array([[1.0, -3.0], [1.0, -1.0]], dtype=np.float32)  # std of 1, -3, 1, -1 is 1.73
    assert compute_mask(w, "std", 5.0).tolist() == [[False, True], [False, False]]
    previous = np.array([[True, False], [True, True]])  # the largest kept is then the first 1
    assert compute_mask(w, "std", 5.0, previous=previous).tolist() == [[True, False], [False, False]]


def test_std_uses_kept_weights_and_shrinks():
    previous = np.array([False, True, True, True, True, True])  # 0.5 pruned
    # kept: -.1 .1 .3 -.2 .1 -> mean .04, std 0.1744; s = 1 prunes |w| < .1744.
    mask = compute_mask(W, "std", 1.0, previous=previous)
    assert mask.tolist() == [False, False, False, True, True, False]


def test_std_by_slices_is_the_whole_array_rule():
    # By hand: std([-3, -1, 1, 3]) = sqrt(5) = 2.236; s = 0.44 keeps all
    # (|w| >= 0.98), s = 0.45 prunes the two 1s (|w| >= 1.006).
    w = np.array([-3.0, -1.0, 1.0, 3.0], dtype=np.float32)
    assert compute_mask(w, "std", 0.44).all()
    assert compute_mask(w, "std", 0.45).tolist() == [True, False, False, True]
    assert compute_mask(w, "std", 1.0).tolist() == [True, False, False, True]
    # 3 < 1.35 * 2.236 prunes all: the first of the largest, -3, stays.
    assert compute_mask(w, "std", 1.35).tolist() == [True, False, False, False]
    # By slices of one: the largest is found where it lies, the first of equals.
    assert std_mask(np.float32([1, -1, 3, -3]), 1.35, chunk=1).tolist() == [False, False, True, False]
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((40, 25)) * 0.05 + 0.01).astype(np.float32)
    previous = rng.random(w.shape) > 0.3
    for s in (0.0, 0.5, 1.0, 2.5):
        for prev in (None, previous):
            kept = w if prev is None else w[prev]
            expected = np.abs(w) >= s * float(np.std(kept, dtype=np.float64))
            if prev is not None:
                expected &= prev
            assert np.array_equal(compute_mask(w, "std", s, previous=prev), expected), (s, prev is None)
            # slices of 7 cut the kept weights unevenly
            assert np.array_equal(std_mask(w, s, previous=prev, chunk=7), expected), (s, prev is None)
    assert not compute_mask(w, "std", 1.0, previous=np.zeros(w.shape, dtype=bool)).any()  # nothing kept


def test_random_exact_count_and_seeded():
    w = np.arange(1, 1001, dtype=np.float32)
    a = compute_mask(w, "random", 0.3, rng=layer_rng(7, "conv1"))
    b = compute_mask(w, "random", 0.3, rng=layer_rng(7, "conv1"))
    c = compute_mask(w, "random", 0.3, rng=layer_rng(8, "conv1"))
    assert int((~a).sum()) == 300
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # Not magnitude: some of the 300 smallest survive.
    assert a[:300].any()


def test_random_shrinks_previous():
    w = np.ones(100, dtype=np.float32)
    previous = np.ones(100, dtype=bool)
    previous[:40] = False
    mask = compute_mask(w, "random", 0.5, previous=previous, rng=layer_rng(0, "x"))
    assert not mask[:40].any() and int((~mask).sum()) == 50


def test_layer_rng_depends_on_name():
    assert layer_rng(1, "a").random() != layer_rng(1, "b").random()


@pytest.mark.parametrize("criterion,amount", [("keepmax", 1.0), ("keepmax", -0.1), ("random", 1.5),
                                              ("keepmax", float("nan")), ("std", -1.0), ("std", float("inf"))])
def test_bad_amounts(criterion, amount):
    with pytest.raises(InputError):
        compute_mask(W, criterion, amount, rng=layer_rng(0, "x"))


def test_unknown_criterion():
    with pytest.raises(InputError, match="unknown criterion"):
        compute_mask(W, "largest", 0.5)


def test_registry_names():
    assert set(CRITERIA) == {"keepmax", "std", "random"}


def test_apply_mask_writes_positive_zero_and_is_pure():
    mask = np.array([True, False, True, True, False, True])
    out = apply_mask(W, mask)
    assert out[1] == 0 and not np.signbit(out[1]) and not np.signbit(out[4])  # -0.1 -> +0.0
    assert W[1] == np.float32(-0.1)  # input untouched
    assert sparsity(mask) == pytest.approx(2 / 6) and zero_count(mask) == 2 and zero_count(out) == 2
    assert type(zero_count(np.zeros(0))) is int


def test_large_layer_is_exact():
    # Passes by slices of 7 give the same mask as a sort.
    rng = np.random.default_rng(0)
    w = rng.integers(-5, 5, size=200).astype(np.float32)  # many ties
    order = np.lexsort((np.arange(w.size), np.abs(w)))
    expected = np.ones(w.size, dtype=bool)
    expected[order[:round(0.37 * 200)]] = False
    assert np.array_equal(compute_mask(w, "keepmax", 0.37), expected)
    assert np.array_equal(keepmax_mask(w, 0.37, chunk=7), expected)
    by_slices = random_mask(w, 0.37, rng=np.random.default_rng(3), chunk=7)
    assert np.array_equal(by_slices, compute_mask(w, "random", 0.37, rng=np.random.default_rng(3)))


def test_a_masks_file_holds_any_name_caffe_takes(tmp_path):
    # HDF5 takes "/" for a path and "." for the group itself; the names are
    # the layer attributes, whatever the datasets are called.
    from caffedsd.maskfile import MaskSet, load_masks, save_masks

    names = [".", "..", "a/b", "a/../c", "%2E", "x y", "é"]
    masks = {name: np.array([True, False, bool(i % 2)]) for i, name in enumerate(names)}
    structure = [(name, "InnerProduct", [[3]]) for name in names]
    save_masks(tmp_path / "m.masks.h5", MaskSet(masks, {name: (name,) for name in names}, structure), "0" * 64)
    loaded = load_masks(tmp_path / "m.masks.h5")
    assert loaded.masks.keys() == masks.keys()
    for name in names:
        np.testing.assert_array_equal(loaded.masks[name], masks[name])


def test_a_masksets_masks_are_read_only_and_its_own():
    """Masks are data: a hook or stage holding a MaskSet cannot change what
    another reads. Its arrays are read-only views of those it was made of
    (no copy of a VGG16's masks), whose maker hands them over."""
    from caffedsd.maskfile import MaskSet

    mine = np.array([True, False, True])
    masks, shared_by = {"fc": mine}, {"fc": ("fc",)}
    maskset = MaskSet(masks, shared_by, [("fc", "InnerProduct", [[3]])])
    with pytest.raises(ValueError, match="read-only"):
        maskset.per_layer()["fc"][0] = False
    assert mine.flags.writeable  # the maker's own flags are left as they were
    masks["conv"], shared_by["conv"] = np.ones(2, bool), ("conv",)
    assert list(maskset.masks) == ["fc"] and list(maskset.shared_by) == ["fc"]


def test_a_plans_own_seed_draws_its_random_masks(tmp_path):
    """prune_model drew with its ``seed`` argument (0 by default) where the
    plan had a seed of its own, which only the CLI and dsd looked up."""
    from caffedsd.caffe_proto import NetParameter
    from caffedsd.caffemodel import read_caffemodel
    from caffedsd.plan import SparsityPlan
    from caffedsd.pruning import prune_model

    net = NetParameter()
    layer = net.layer.add(name="ip1", type="InnerProduct")
    layer.blobs.add().shape.dim.extend([10, 10])
    layer.blobs[0].data.extend(np.arange(1, 101, dtype=np.float32))
    (tmp_path / "w.caffemodel").write_bytes(net.SerializeToString())
    model = read_caffemodel(tmp_path / "w.caffemodel")
    seeded = SparsityPlan(criterion="random", sparsity=0.5, seed=7)
    own, _ = prune_model(model, seeded)
    assert own.meta["seed"] == 7
    expected = random_mask(np.arange(1, 101, dtype=np.float32).reshape(10, 10), 0.5, rng=layer_rng(7, "ip1"))
    np.testing.assert_array_equal(own.masks["ip1"], expected)
    given, _ = prune_model(model, SparsityPlan(criterion="random", sparsity=0.5), seed=7)
    np.testing.assert_array_equal(given.masks["ip1"], expected)


def test_a_mask_of_no_axes_is_kept_and_a_trailing_nul_is_refused(tmp_path):
    """A weight blob of `shape {}` (one value) made prune a traceback (HDF5
    chunks no scalar); a fixed-length string drops a name's trailing NUL,
    and the masks then named a layer their model lacks."""
    from caffedsd.maskfile import MaskSet, load_masks, save_masks

    maskset = MaskSet({"fc": np.array(True)}, {"fc": ("fc",)}, [("fc", "InnerProduct", [[]])])
    save_masks(tmp_path / "m.masks.h5", maskset, "0" * 64)
    loaded = load_masks(tmp_path / "m.masks.h5")
    assert loaded.masks["fc"].shape == () and loaded.masks["fc"]
    named = MaskSet({"fc\0": np.ones(2, bool)}, {"fc\0": ("fc\0",)}, [("fc\0", "InnerProduct", [[2]])])
    with pytest.raises(InputError, match=r"layer 'fc\\x00': a name that ends in a NUL character"):
        save_masks(tmp_path / "n.masks.h5", named, "0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.masks.h5"]


def test_one_element_attributes_are_their_element_and_a_second_mask_of_a_layer_is_refused(tmp_path):
    """FORMAT.md lets an attribute be of shape (1,), which the reader took
    as an array ("attribute 'format' is not text"); of two datasets with
    one layer attribute, the one later in HDF5's link order won."""
    import h5py

    from caffedsd.maskfile import MaskSet, load_masks, save_masks

    maskset = MaskSet({"fc": np.array([True, False, True])}, {"fc": ("fc",)}, [("fc", "InnerProduct", [[3]])],
                      {"criterion": "keepmax"})
    path = tmp_path / "m.masks.h5"
    save_masks(path, maskset, "0" * 64)
    with h5py.File(path, "a") as h5:
        for obj in (h5, h5["masks"], h5["masks"]["fc"]):
            for key in list(obj.attrs):
                value = obj.attrs[key]
                del obj.attrs[key]
                obj.attrs[key] = np.array([value])
    loaded = load_masks(path)
    np.testing.assert_array_equal(loaded.masks["fc"], [True, False, True])
    assert loaded.meta == {"criterion": "keepmax"} and loaded.model_sha256 == "0" * 64
    assert loaded.shared_by == {"fc": ("fc",)}
    with h5py.File(path, "a") as h5:
        h5["masks"]["zz"] = np.zeros(3, bool)
        h5["masks"]["zz"].attrs["layer"] = np.bytes_(b"fc")
    with pytest.raises(InputError, match=r"m\.masks\.h5: masks/zz is a second mask of layer 'fc'$"):
        load_masks(path)


def test_a_mask_hdf5_cannot_open_is_named_as_such(tmp_path):
    """h5py's get() gives None for an object it cannot open (HDF5 2.0's
    datatype message under an HDF5 1.x, a dangling link), which was said to
    be 'not a dataset'."""
    import h5py

    from caffedsd.maskfile import MaskSet, load_masks, save_masks

    maskset = MaskSet({"fc": np.array([True, False, True])}, {"fc": ("fc",)}, [("fc", "InnerProduct", [[3]])], {})
    path = tmp_path / "m.masks.h5"
    save_masks(path, maskset, "0" * 64)
    with h5py.File(path, "a") as h5:
        h5["masks"]["zz"] = h5py.SoftLink("/nowhere")
    with pytest.raises(InputError, match=r"m\.masks\.h5: masks/zz cannot be opened \(.*\): damaged, or written by a "
                                         r"newer HDF5 than this h5py's \d"):
        load_masks(path)
