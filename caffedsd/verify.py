"""Checks that a pruned model is what it claims, in stock Caffe too."""
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .caffe_env import (build_in_child, caffe_binary, check_gpu, check_net_parts, exit_text, failure_reason,
                        has_python_layers, pycaffe_dir, python_path)
from .caffe_proto import read_net_prototxt
from .caffemodel import nonfinite_counts, read_caffemodel
from .errors import CheckFailed, InputError
from .maskfile import beside_check, masks_for
from .masks import masked_nonzeros, zero_count
from .netcheck import built_layers, built_state, check_pair, check_tied_weights

# Names run to the end of the line: Caffe takes any string for one.
_IGNORED = re.compile(r"Ignoring source layer (.+)")
# caffe.cpp's final "NAME = VALUE" lines (a loss's followed by its weighted
# value), not its per-batch "Batch i, NAME = VALUE" ones.
_OUTPUT = re.compile(r"caffe\.cpp:\d+\] (?!Batch \d+, )(.+?) = ([-+0-9.eEinfa]+)")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_masked_zeros(model, maskset):
    """One Check per masked layer: every masked position is exactly 0.0."""
    checks = []
    for layer, mask in maskset.per_layer().items():
        bad = masked_nonzeros(model.layer(layer).blobs[0].data, mask)
        pruned = zero_count(mask)
        checks.append(Check(f"zeros {layer}", bad == 0,
                            f"{pruned} masked positions all 0.0" if bad == 0
                            else f"{bad} of {pruned} masked positions are not 0.0"))
    return checks


def check_finite_values(model):
    """One Check: no blob holds NaN or Inf (what a diverged training leaves)."""
    counts = nonfinite_counts(model)
    if not counts:
        return Check("finite", True, "no NaN or Inf in any blob")
    where = ", ".join(f"{layer} blob {index} ({bad})" for (layer, index), bad in counts.items())
    return Check("finite", False, f"{sum(counts.values())} NaN/Inf values: {where}")


def run_caffe_test(net_path, weights_path, iterations=1, gpu=None, binary=None, timeout=None):
    """Run ``caffe test`` on the pair; returns (returncode, full log text)."""
    binary = binary or caffe_binary()
    cmd = [str(binary), "test", f"--model={net_path}", f"--weights={weights_path}", f"--iterations={iterations}"]
    if gpu is not None:
        cmd.append(f"--gpu={gpu}")
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")
    pydir = pycaffe_dir()
    if pydir is not None:  # a Python layer's module is imported by the binary's own Python
        env["PYTHONPATH"] = python_path(pydir, binary=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def parse_test_outputs(log):
    """{output name: value} from the final lines of ``caffe test``'s log; an
    output of many values (a deploy net's prob) logs one line per value, and
    maps to the tuple of them."""
    values = {}
    for match in _OUTPUT.finditer(log):
        values.setdefault(match.group(1), []).append(float(match.group(2)))
    return {name: each[0] if len(each) == 1 else tuple(each) for name, each in values.items()}


def _output_text(name, value):
    return f"{name} = {value:g}" if isinstance(value, float) else f"{name}: {len(value)} values"


def ignored_weights(model, net, log):
    """The layers of ``model`` with weights that `caffe test`'s ``log`` says
    it ignored, less those its TEST net (``net`` at level 0) does not build:
    Caffe skips the TRAIN-only ones on purpose (untested_weights)."""
    with_blobs = {layer.name for layer in model.layers if layer.blobs}
    not_tested = set(untested_weights(model, net))
    return [name for name in _IGNORED.findall(log) if name in with_blobs and name not in not_tested]


def untested_weights(model, net):
    """The layers of ``model`` with weights that ``net`` has but does not
    build in its TEST phase (at level 0), in the model's order."""
    tested = {layer.name for layer in built_layers(net, [built_state(net, "TEST")])}
    not_tested = {layer.name for layer in net.layer} - tested
    return [layer.name for layer in model.layers if layer.blobs and layer.name in not_tested]


def check_with_caffe(model, net, net_path, weights_path, gpu=None):
    """Stock `caffe test` loads the pair, uses every weight of the layers its
    TEST net has (the prototxt ``net``'s TRAIN-only layers it skips, as
    Caffe means to), and runs a forward pass."""
    try:  # what Caffe would abort on, said plainly rather than as its backtrace
        check_net_parts(net, net_path)
        if has_python_layers(net):  # the binary's abort says nothing of the layer's Python exception
            build_in_child("net", net_path, net_path, python_layers=True)
    except InputError as exc:
        return [Check("caffe test", False, str(exc))]
    code, log = run_caffe_test(net_path, weights_path, iterations=1, gpu=gpu)
    if code != 0:
        return [Check("caffe test", False, f"{exit_text(code)}: {failure_reason(log)}")]
    ignored, skipped = ignored_weights(model, net, log), untested_weights(model, net)
    detail = "Caffe ignored the weights of " + ", ".join(ignored) if ignored else "no layer with weights ignored"
    if skipped:
        detail += f"; not in its TEST net, so not loaded: {', '.join(skipped)}"
    checks = [Check("caffe loads every weight", not ignored, detail)]
    outputs = parse_test_outputs(log)
    checks.append(Check("caffe test forward", True,
                        ", ".join(_output_text(k, v) for k, v in outputs.items()) or "ran"))
    return checks


def require_all(checks):
    """Raise CheckFailed (exit status 1) unless every check holds."""
    failed = sum(not c.ok for c in checks)
    if failed:
        raise CheckFailed(f"{failed} check(s) failed")


def verify_weights(weights_path, masks_path=None, net_path=None, allow_python_layers=False, gpu=None):
    """All checks that apply to a caffemodel: [Check]."""
    if gpu is not None:
        check_gpu(gpu)
    model = read_caffemodel(weights_path)
    maskset, pair = beside_check(model) if masks_path is None else (masks_for(model, masks_path), None)
    checks = [check_finite_values(model)]
    if pair is not None:
        checks.append(Check("masks written with it", *pair))
    if maskset is not None:
        checks += check_masked_zeros(model, maskset)
    elif pair is None:
        checks.append(Check("masks", True, f"none beside {model.path.name}; zero check skipped"))
    if net_path is not None:
        net = read_net_prototxt(net_path, allow_python_layers)
        try:
            check_pair(net, net_path, model, states=[built_state(net, "TEST")])  # what `caffe test` builds
            check_tied_weights(built_layers(net, [built_state(net, "TEST")]), model, net_path)
        except InputError as exc:  # what is verified, not a bad argument; Caffe would abort on it
            checks.append(Check("prototxt fits weights", False, str(exc)))
            return checks
        checks.append(Check("prototxt fits weights", True, f"{Path(net_path).name} matches every layer with weights"))
        checks += check_with_caffe(model, net, net_path, weights_path, gpu=gpu)
    return checks
