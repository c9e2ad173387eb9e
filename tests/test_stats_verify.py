"""`caffedsd stats`, `verify` and `info` against real Caffe."""
import json

import numpy as np
import pytest

from caffedsd.caffemodel import read_caffemodel, write_caffemodel
from caffedsd.stats import count_nonzero
from conftest import assert_one_line_error


def test_stats_counts_and_json(tiny, cli):
    _, weights = tiny
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    result = cli("stats", "-w", "p.caffemodel", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {r["layer"]: r for r in data["layers"]}
    assert rows["conv1"]["shapes"] == [[4, 1, 3, 3], [4]]
    assert rows["conv1"]["params"] == 40 and rows["conv1"]["nonzero"] == 40 - 18
    assert rows["conv1"]["masked"] == 18 and rows["bn1"]["masked"] is None
    assert rows["conv1"]["weight_sparsity"] == 18 / 36 and rows["bn1"]["weight_sparsity"] is None  # not prunable
    assert rows["fc1"]["bytes"] == 1440 * 4
    # Shared fc2 weights (100) and biases (10) count once in the totals.
    expected = 40 + (4 + 4 + 1) + (4 + 4) + 1440 + 110
    assert data["totals"]["params"] == expected
    assert data["totals"]["masked"] == 18 + 720 + 50
    table = cli("stats", "-w", "p.caffemodel").output
    assert "conv1" in table and "total" in table


def test_count_nonzero_is_exact_past_float32_range():
    ones = np.ones(2 ** 24 + 3, dtype=np.float32)  # float32 counting would stall at 2**24; 5 slices
    assert count_nonzero(ones) == 2 ** 24 + 3


def test_verify_passes_then_catches_a_nonzero(tiny, tmp_path, cli):
    proto, weights = tiny
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    result = cli("verify", "-w", "p.caffemodel", "-p", proto)
    assert result.exit_code == 0, result.output
    assert "ok    caffe loads every weight" in result.output and "FAIL" not in result.output
    # Put one value back at a masked position: verify must fail with exit 1.
    model = read_caffemodel(tmp_path / "p.caffemodel")
    w = np.array(model.layer("fc1").blobs[0].data)
    w[w == 0] = 0.5
    write_caffemodel(model, tmp_path / "tampered.caffemodel", replace={("fc1", 0): w})
    (tmp_path / "tampered.masks.h5").write_bytes((tmp_path / "p.masks.h5").read_bytes())
    result = cli("verify", "-w", "tampered.caffemodel")
    assert result.exit_code == 1
    assert "FAIL  zeros fc1: 720 of 720 masked positions are not 0.0" in result.output
    # The masks copied beside it were written beside another model.
    assert ("FAIL  masks written with it: tampered.masks.h5: written beside another tampered.caffemodel than the "
            "one there now" in result.output)
    assert "ok    masks written with it" in cli("verify", "-w", "p.caffemodel").output
    # Named, they are checked against it, whichever model they were written with.
    result = cli("verify", "-w", "tampered.caffemodel", "--masks", "p.masks.h5")
    assert result.exit_code == 1 and "masks written with it" not in result.output


def test_verify_reports_caffe_failure(tiny, tmp_path, cli):
    proto, weights = tiny
    # Same layer names, and outputs and kernels as the weights have them, but
    # 2 input channels: stock caffe refuses to copy the weights.
    (tmp_path / "wrong.prototxt").write_text(proto.read_text().replace("dim: 2 dim: 1 dim: 8", "dim: 2 dim: 2 dim: 8"))
    result = cli("verify", "-w", weights, "-p", "wrong.prototxt")
    assert result.exit_code == 1
    assert "FAIL  caffe test: ended by SIGABRT: " in result.output  # glog's abort, not "exit status -6"
    # Caffe's own reason, not the tail of its backtrace.
    assert "Cannot copy param 0 weights from layer 'conv1'; shape mismatch" in result.output
    assert "(net.cpp:" in result.output and "__libc_start_main" not in result.output and "@ 0x" not in result.output


def test_a_prototxt_that_does_not_fit_fails_verify(tiny, tmp_path, cli):
    """verify checks that the prototxt fits: a misfit is what it found (exit
    1, its checks printed), not a bad argument (exit 2)."""
    proto, weights = tiny
    (tmp_path / "other.prototxt").write_text(proto.read_text().replace("num_output: 4", "num_output: 5", 1))
    result = cli("verify", "-w", weights, "-p", "other.prototxt")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("ok    finite"), result.output
    assert "FAIL  prototxt fits weights: other.prototxt does not match" in result.output
    assert "caffe test" not in result.output  # Caffe would abort on it


def test_a_layer_type_stock_caffe_lacks_fails_verify_and_is_named_where_prune_goes_on(tiny, tmp_path, cli):
    """verify printed Caffe's abort with its registry of some 60 types;
    prune -p skipped Caffe's check of input sizes without a word."""
    proto, weights = tiny
    fork = tmp_path / "fork.prototxt"
    fork.write_text(proto.read_text() + 'layer { name: "perm" type: "Permute" bottom: "fc1" top: "perm" }\n')
    said = "fork.prototxt: layer 'perm' has type 'Permute', which this Caffe does not have"
    result = cli("verify", "-w", weights, "-p", "fork.prototxt")
    assert result.exit_code == 1, result.output
    assert f"FAIL  caffe test: {said} (a layer of a Caffe fork" in result.output
    assert "known types" not in result.output
    result = cli("prune", "-w", weights, "-p", "fork.prototxt", "-s", 0.5, "-o", "p.caffemodel")
    assert result.exit_code == 0, result.output
    assert f"caffedsd: warning: {said}" in result.output
    assert "so Caffe's own check of the weights' input sizes is skipped" in result.output
    # Not before a bad input's one line: said once the command's own checks pass.
    assert_one_line_error(cli("prune", "-w", weights, "-p", "fork.prototxt", "-r", "nosuch=0.5", "-o", "q.caffemodel"),
                          "--rule 'nosuch' matches no prunable layer")


def test_failure_reason_prefers_the_check_line():
    from caffedsd.caffe_env import failure_reason

    log = ("I1122 04:00:00.000001  77 net.cpp:100] Creating layer conv1\n"
           "F1122 04:00:00.000002  77 blob.cpp:33] Check failed: shape[i] >= 0 (-1 vs. 0)\n"
           "*** Check failure stack trace: ***\n    @     0x7f00  google::LogMessage::Fail()\n"
           "    @     0x7f01  __libc_start_main\n")
    assert failure_reason(log) == "Check failed: shape[i] >= 0 (-1 vs. 0) (blob.cpp:33)"
    assert failure_reason("E1122 bad\n*** Aborted at 1 ***\n    @ 0x1 f\n") == "E1122 bad"
    # An uncaught C++ exception: the signal handler's "PC:" line is no reason.
    log = ("terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n"
           "*** Aborted at 1700000000 (unix time) try \"date -d @1700000000\" if you are using GNU date ***\n"
           "PC: @                0x0 (unknown)\n*** SIGABRT (@0x3e8) received by PID 1000; stack trace: ***\n"
           "    @     0x7f00  (unknown)\n")
    assert failure_reason(log) == "what():  std::bad_alloc"


def test_failure_reason_of_a_python_layer_is_its_python_exception():
    from caffedsd.caffe_env import failure_reason

    # Raised in the layer's setup: the traceback ends with it.
    log = ('Traceback (most recent call last):\n  File "<string>", line 2, in <module>\n'
           '  File "/x/bad.py", line 4, in setup\n    raise ValueError("k")\nValueError: k\n')
    assert failure_reason(log) == "ValueError: k"
    # A module or class not found: Boost.Python prints it bare, then raises a SystemError that names nothing.
    log = ("ModuleNotFoundError: No module named 'pylayers'\nTraceback (most recent call last):\n"
           '  File "<string>", line 2, in <module>\n'
           "SystemError: <Boost.Python.function object at 0x55> returned NULL without setting an exception\n")
    assert failure_reason(log) == "ModuleNotFoundError: No module named 'pylayers'"
    # A chain: the exception raised, not its cause.
    log = ('Traceback (most recent call last):\n  File "/x/bad.py", line 2, in setup\n'
           "ModuleNotFoundError: No module named 'reader'\n\n"
           "The above exception was the direct cause of the following exception:\n\n"
           'Traceback (most recent call last):\n  File "/x/bad.py", line 4, in setup\n'
           "RuntimeError: the layer needs reader: pip install it\n")
    assert failure_reason(log) == "RuntimeError: the layer needs reader: pip install it"


def test_the_build_check_child_sees_only_the_runs_gpu():
    from caffedsd.caffe_env import visible_devices

    assert visible_devices(None, None) is None and visible_devices(None, "2,3") is None  # CPU runs: as the parent
    assert visible_devices(3, None) == "3"
    assert visible_devices(1, "2,3") == "3"  # --gpu counts the parent's visible GPUs
    assert visible_devices(0, "GPU-5e2b, GPU-77aa") == "GPU-5e2b"
    assert visible_devices(2, "2,3") is None  # not the parent's: its own --gpu check says so


@pytest.mark.caffe
def test_info_json(cli):
    result = cli("info", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["caffe_binary"] and data["pycaffe"]
    assert data["caffe_version"] == "1.0.0"
    import subprocess

    proc = subprocess.run([data["caffe_binary"], "--version"], capture_output=True, text=True)
    assert "1.0.0" in proc.stdout + proc.stderr


@pytest.mark.caffe
def test_caffe_root_binary_is_preferred(tmp_path, monkeypatch):
    from caffedsd.caffe_env import caffe_binary

    real = caffe_binary()
    tools = tmp_path / "caffe_root" / "build" / "tools"
    tools.mkdir(parents=True)
    (tools / "caffe").symlink_to(real)
    monkeypatch.delenv("CAFFEDSD_CAFFE_BIN", raising=False)
    monkeypatch.setenv("CAFFE_ROOT", str(tmp_path / "caffe_root"))
    assert caffe_binary() == tools / "caffe"
    monkeypatch.setenv("CAFFEDSD_CAFFE_BIN", str(real))
    assert caffe_binary() == real


def test_shapes_in_the_stats_table_name_scalar_blobs():
    from caffedsd.report import shape_text

    assert [shape_text(s) for s in ([20, 1, 5, 5], [20], [])] == ["20x1x5x5", "20", "scalar"]


def test_verify_takes_train_only_layers_and_many_valued_outputs_as_caffe_test_means_them(caffe, tmp_path, cli):
    """`caffe test` builds the TEST net: it skips a TRAIN-only layer's
    weights on purpose, and logs an output of many values once per value."""
    net = tmp_path / "tr.prototxt"
    net.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 8 } } }\n'
        'layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" '
        'inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }\n'
        'layer { name: "aux" type: "InnerProduct" bottom: "data" top: "aux" include { phase: TRAIN } '
        'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }\n')
    caffe.Net(str(net), caffe.TRAIN).save(str(tmp_path / "tr.caffemodel"))
    result = cli("verify", "-w", "tr.caffemodel", "-p", net)
    assert result.exit_code == 0, result.output
    assert "caffe test forward: a: 8 values" in " ".join(result.output.split())
    # Not "no layer with weights ignored" alone, when Caffe's log names aux as one it ignored.
    assert "no layer with weights ignored; not in its TEST net, so not loaded: aux\n" in result.output
    # Nor a layer of a higher level than `caffe test`'s 0, whatever level the net's state names.
    text = net.read_text().replace("include { phase: TRAIN }", "include { phase: TEST min_level: 1 }")
    net.write_text("state { level: 1 }\n" + text)
    result = cli("verify", "-w", "tr.caffemodel", "-p", net)
    assert result.exit_code == 0, result.output


def test_parse_test_outputs_of_one_and_many_values():
    from caffedsd.verify import parse_test_outputs

    log = ("I1 caffe.cpp:292] Batch 0, accuracy = 0.5\nI1 caffe.cpp:313] accuracy = 0.75\n"
           "I1 caffe.cpp:313] prob = 0.25\nI1 caffe.cpp:313] prob = 0.125\n")
    assert parse_test_outputs(log) == {"accuracy": 0.75, "prob": (0.25, 0.125)}


def test_caffe_tests_names_with_spaces_are_read_whole(caffe, tmp_path):
    from caffedsd.caffe_proto import read_net_prototxt
    from caffedsd.verify import ignored_weights, parse_test_outputs, run_caffe_test

    net = """
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 } data_filler { type: "gaussian" } } }
layer { name: "ip a" type: "InnerProduct" bottom: "data" top: "ip a" inner_product_param { num_output: 3 } }
layer { name: "acc" type: "Accuracy" bottom: "ip a" bottom: "label" top: "test acc" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip a" bottom: "label" top: "my loss" }
"""
    extra = net.replace('layer { name: "acc"', 'layer { name: "extra layer" type: "InnerProduct" bottom: "data" '
                        'top: "e" inner_product_param { num_output: 2 } }\nlayer { name: "acc"')
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "extra.prototxt").write_text(extra)
    caffe.Net(str(tmp_path / "extra.prototxt"), caffe.TEST).save(str(tmp_path / "w.caffemodel"))
    code, log = run_caffe_test(tmp_path / "net.prototxt", tmp_path / "w.caffemodel", iterations=2)
    assert code == 0, log[-2000:]
    assert set(parse_test_outputs(log)) == {"test acc", "my loss"}
    ignored = ignored_weights(read_caffemodel(tmp_path / "w.caffemodel"), read_net_prototxt(tmp_path / "net.prototxt"),
                              log)
    assert ignored == ["extra layer"]


def test_a_caffe_binary_named_by_the_environment_must_be_one(tmp_path):
    """CAFFEDSD_CAFFE_BIN=/nonexistent was passed over for another caffe, without a word."""
    import os
    import subprocess
    import sys

    for given in (tmp_path / "nonexistent", tmp_path):
        env = dict(os.environ, CAFFEDSD_CAFFE_BIN=str(given))
        proc = subprocess.run([sys.executable, "-m", "caffedsd", "info"],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip() == f"caffedsd: CAFFEDSD_CAFFE_BIN={given}: not an executable file"
