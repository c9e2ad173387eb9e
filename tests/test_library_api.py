"""caffedsd called from Python, not through the CLI, which checks its input
before these calls: numpy's numbers are numbers, and a wrong argument is a
CaffeDsdError naming it, never a wrong mask or a file that reads back as
damaged. Tiny arrays, answers by hand; no Caffe."""
import copy
import json
import math
import pickle
import re

import numpy as np
import pytest

from caffedsd.caffe_proto import NetParameter
from caffedsd.caffemodel import read_caffemodel, write_caffemodel
from caffedsd.coding import kmeans_1d, quantized
from caffedsd.errors import CaffeDsdError, InputError, PlanError, RecipeError
from caffedsd.lowrank import factor, rank_for_energy
from caffedsd.maskfile import MaskSet
from caffedsd.masks import apply_mask, compute_mask, keepmax_mask, layer_rng
from caffedsd.plan import SparsityPlan
from caffedsd.plan_from_scan import Choice, by_max_drop, to_plan
from caffedsd.recipe import DenseStage, PruneStage, Recipe
from caffedsd.stats import model_stats
from caffedsd.yamlio import parse_yaml

W = np.array([1, -2, 3, -4], dtype=np.float32)


def _model(path, weights):
    """A caffemodel of one InnerProduct layer 'ip' holding ``weights`` (2-D)."""
    net = NetParameter()
    layer = net.layer.add(name="ip", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend(weights.shape)
    blob.data.extend(np.asarray(weights, dtype=np.float32).reshape(-1))
    path.write_bytes(net.SerializeToString())
    return read_caffemodel(path)


def test_numpy_numbers_are_numbers_and_values_keep_them_as_pythons():
    # |W| = 1 2 3 4: half of them, the two smallest, go.
    assert compute_mask(W, "keepmax", np.float32(0.5)).tolist() == [False, False, True, True]
    assert compute_mask(W, "keepmax", np.int64(0)).all()
    plan = SparsityPlan(sparsity=np.float32(0.5), rules=(("ip", np.float64(0.25)),), seed=np.int64(3))
    assert type(plan.sparsity) is float and type(plan.rules[0].value) is float and type(plan.seed) is int
    assert SparsityPlan.from_yaml(plan.to_yaml()) == plan  # numpy's floats made YAML's writer raise
    linspace = np.linspace(0, 0.9, 10)[5]
    assert to_plan([Choice("conv1", 10, linspace, 0.1)], "keepmax").to_yaml() == \
        "criterion: keepmax\nlayers:\n  conv1: 0.5\n"
    stage = DenseStage(np.int64(500), np.float32(0.5))
    assert (stage.iterations, stage.lr_scale) == (500, 0.5) and type(stage.iterations) is int
    recipe = Recipe("s.prototxt", [stage], seed=np.uint8(7), checkpoint_every=np.int32(100))
    assert type(recipe.seed) is int and type(recipe.checkpoint_every) is int
    assert Recipe.from_dict(parse_yaml(recipe.to_yaml(), "r", RecipeError)) == recipe


@pytest.mark.parametrize("make, message", [
    (lambda: compute_mask(W, "keepmax", True), "keepmax amount True"),
    (lambda: compute_mask(W, "keepmax", np.array(0.5)), r"keepmax amount array\(0.5\)"),
    # As repr() gives them: np.True_ and np.float64(5.0) under numpy 2, True and 5.0 under numpy 1.
    (lambda: SparsityPlan(sparsity=np.bool_(True)), rf"sparsity {re.escape(repr(np.bool_(True)))}: not a number"),
    (lambda: DenseStage(np.float64(5.0)),
     rf"iterations {re.escape(repr(np.float64(5.0)))} must be a whole number >= 0 \(write 5"),
    (lambda: Recipe("s", None), "stages None must be a list of stages"),
    (lambda: SparsityPlan(rules=((1, 0.5),)), "rule 1: the layer name or glob must be a non-empty string"),
    (lambda: layer_rng(1.5, "ip"), "seed 1.5: must be a whole number >= 0"),
    (lambda: layer_rng(-1, "ip"), "seed -1: must be a whole number >= 0"),
    (lambda: compute_mask(W, "random", 0.5), "random criterion needs an rng"),
    (lambda: compute_mask(W, "keepmax", 0.5, previous=[True]), r"previous mask has shape \(1,\), weights \(4,\)"),
    (lambda: apply_mask(W, np.array([False])), r"mask has shape \(1,\), weights \(4,\)"),
    (lambda: factor(np.ones((5, 3)), 4), r"rank 4: must be a whole number in 1..3"),
    (lambda: rank_for_energy([1.0], None), "--energy None: must be a number"),
    (lambda: by_max_drop({}, None), "--max-drop None: must be a number"),
    (lambda: kmeans_1d(W, 0), "clusters 0: must be a whole number >= 1"),
    (lambda: quantized(np.arange(6.0), np.ones(7, bool), 2), "keep mask of 7 values for 6 weights"),
    (lambda: quantized(np.arange(6.0), np.ones(6, bool), -1), "bits -1: must be a whole number in 1..16"),
])
def test_a_wrong_argument_is_named(make, message):
    with pytest.raises(CaffeDsdError, match=message):
        make()


@pytest.mark.parametrize("weights, criterion, amount, bad", [
    ([math.nan, math.nan, 1, 2], "keepmax", 0.75, 2),  # pruned none of the 3 asked: NaN was the threshold
    ([math.nan, 3, 1, 2], "std", 0.5, 1),  # kept all
    ([math.inf, 3, 1, 2], "std", 0.5, 1),  # kept the Inf alone
])
def test_non_finite_weights_are_refused_not_pruned_other_than_asked(weights, criterion, amount, bad):
    with pytest.raises(InputError, match=f"weights hold {bad} NaN/Inf values \\(of 4\\)"):
        compute_mask(np.array(weights, dtype=np.float32), criterion, amount)


def test_a_criterion_called_directly_takes_a_0_1_previous_mask():
    # Position 1 was pruned before; of the others, 4 (the smallest) goes.
    assert keepmax_mask(np.array([4.0, 5, 6, 7]), 0.5, previous=[1, 0, 1, 1]).tolist() == [False, False, True, True]


def test_frozen_plans_keep_their_own_verified_record_and_hash():
    record = {"measured_drop": 0.1}
    plan = SparsityPlan(sparsity=0.5, verified=record)
    record["measured_drop"] = math.nan
    assert plan.verified["measured_drop"] == 0.1
    assert SparsityPlan.from_yaml(plan.to_yaml()) == plan
    assert hash(plan) == hash(SparsityPlan(sparsity=0.5, verified={"measured_drop": 0.2}))
    assert PruneStage(plan).to_dict()["verified"] == {"measured_drop": 0.1}
    assert copy.deepcopy(plan) == pickle.loads(pickle.dumps(plan)) == plan
    assert json.loads(json.dumps(plan.verified)) == {"measured_drop": 0.1}


def test_write_caffemodel_masks_a_replacement_and_refuses_what_it_would_scramble(tmp_path):
    model = _model(tmp_path / "w.caffemodel", np.array([[1, -2, 3], [-4, 5, -6]]))
    new = np.array([[10, -20, 30], [-40, 50, -60]], dtype=np.float32)
    keep = np.array([[True, False, True], [False, True, False]])
    write_caffemodel(model, tmp_path / "out.caffemodel", replace={("ip", 0): new}, masks={("ip", 0): keep})
    written = read_caffemodel(tmp_path / "out.caffemodel").layer("ip").blobs[0].data
    assert written.tolist() == [[10, 0, 30], [0, 50, 0]]
    for replace, masks, message in [
            ({("ip", -1): new}, None, r"no blob \('ip', -1\)"),
            (None, {("ip", "0"): keep}, r"no blob \('ip', '0'\)"),
            ({("ip", 0): new.T}, None, r"a replacement of shape \(3, 2\) for a blob of \(2, 3\)"),
            (None, {("ip", 0): keep[0]}, "a mask of size 3 for a blob of 6")]:
        with pytest.raises(InputError, match=message):
            write_caffemodel(model, tmp_path / "bad.caffemodel", replace=replace, masks=masks)
    assert not (tmp_path / "bad.caffemodel").exists()


def test_a_mask_set_save_masks_would_write_and_load_masks_refuse_is_refused_when_made():
    structure = [("ip", "InnerProduct", [[4]])]
    for masks, shared_by, meta, message in [
            ({"ip": np.ones(3, bool)}, {"ip": ("ip",)}, {}, r"mask of 'ip' is bool \[3\], not a boolean \[4\]"),
            ({"x": np.ones(4, bool)}, {"x": ("x",)}, {}, "mask of 'x': its layers"),
            ({"ip": np.ones(4, bool)}, {}, {}, "each mask needs the layers that use it"),
            ({"ip": np.ones(4, bool)}, {"ip": ("ip",)}, {"format": "x"}, "meta format: caffedsd's own")]:
        with pytest.raises(InputError, match=message):
            MaskSet(masks, shared_by, structure, meta)


def test_a_models_sparsity_is_the_fraction_of_zeros_exactly(tmp_path):
    model = _model(tmp_path / "w.caffemodel", np.array([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]]))
    stats = model_stats(model)
    assert stats["layers"][0]["sparsity"] == 0.2  # 1 - 8/10 is 0.19999999999999996
    assert stats["totals"]["sparsity"] == stats["totals"]["weight_sparsity"] == 0.2


def test_compress_refuses_widths_decompress_would_refuse(tmp_path):
    from caffedsd.dcz import compress

    _model(tmp_path / "w.caffemodel", np.arange(12.0).reshape(3, 4))
    for bits, index_bits, message in [
            ({"conv": 8, "fc": 17}, None, "bits: fc 17: must be a whole number in 1..16"),
            ({"conv": 8, "fc": 5}, {"fc": 20}, "index_bits: fc 20: must be a whole number in 1..16"),
            ({"fc": 5}, None, "both given"),
            (5, None, "bits 5: expected")]:
        with pytest.raises(InputError, match=message):
            compress(tmp_path / "w.caffemodel", tmp_path / "w.dcz", bits, index_bits)
        assert not (tmp_path / "w.dcz").exists()


def test_plans_and_recipes_still_refuse_what_they_refused():
    with pytest.raises(PlanError, match="seed 1.5"):
        SparsityPlan(sparsity=0.5, seed=1.5)
    with pytest.raises(RecipeError, match="seed True"):
        Recipe("s", [DenseStage(1)], seed=True)
