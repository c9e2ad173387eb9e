"""The solver's test nets: their TEST passes and when they are due, the
names of their outputs, and the layers of phase TEST only, whose weights
the train net does not hold."""
from dataclasses import dataclass

from .errors import InputError
from .solver_spec import test_iterations, test_only_params, test_output_name, tested_net_layers, tested_net_source
from .values import next_multiple


def test_net_paths(solver, spec):
    """The file each of the solver's test nets was built from."""
    return [tested_net_source(spec, index)[0] for index in range(len(solver.test_nets))]


def test_only_layers(solver):
    """[(test net, [layer names])]: the weight layers of each test net that
    the train net lacks (those of phase TEST only), which share_with does
    not reach."""
    return [(net, [name for name, blobs in net.params.items() if len(blobs) and name not in solver.net.params])
            for net in solver.test_nets]


def set_test_only_values(solver, values):
    """Set blob 0 of each test net's layers of phase TEST only that
    ``values`` ({layer: array}) names."""
    for net, names in test_only_layers(solver):
        for name in names:
            if name in values:
                net.params[name][0].data[...] = values[name]


def check_output_names(solver, spec, counts):
    """The outputs of the test nets evaluate runs (``counts`` of batches
    above 0), as it names them ("#i/name" past the first net), must be
    distinct, and none "iter": one would replace another's value in what
    is printed and recorded (tests.csv's first column is "iter")."""
    seen = {}
    for index, (net, path, count) in enumerate(zip(solver.test_nets, test_net_paths(solver, spec), counts)):
        if count <= 0:
            continue
        for name in net.outputs:
            named = test_output_name(index, name)
            if named == "iter" or named in seen:
                other = "tests.csv's iteration column" if named == "iter" else f"an output of test net #{seen[named]}"
                raise InputError(f"{path}: test net #{index}'s output {name!r} would be recorded as {named!r}, the "
                                 f"name of {other}; rename the top")
            seen[named] = index


def check_test_nets_fit(solver, spec):
    """A test net's layer that the train net also has takes the train net's
    blobs at each TEST pass (share_with): of another count or shape, Caffe
    aborts the process there, after training."""
    def shapes(net):  # every layer, those without weights too: Caffe compares the counts
        return {name: [list(blob.data.shape) for blob in layer.blobs]
                for name, layer in zip(net._layer_names, net.layers)}

    trained = shapes(solver.net)
    for net, path in zip(solver.test_nets, test_net_paths(solver, spec)):
        for name, mine in shapes(net).items():
            if name in trained and mine != trained[name]:
                raise InputError(f"{path}: layer {name!r} has weights {mine} in the test net, but "
                                 f"{trained[name]} in the train net of {spec.path}: Caffe would abort at the first "
                                 "TEST pass")


@dataclass(frozen=True)
class PeriodicTests:
    """When a phase measures the TEST phase while it trains, as Caffe's
    solver does: before the step at every solver iteration that is a
    multiple of ``interval`` (0: never), iteration 0 only when
    ``initialization``. The end of a phase is always measured."""

    interval: int = 0
    initialization: bool = True

    def __post_init__(self):
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 0:
            raise InputError(f"--test-interval {self.interval!r}: must be 0 (no periodic tests) or more")

    @classmethod
    def of_solver(cls, param, interval=None):
        """The solver's test_interval and test_initialization; ``interval``
        (--test-interval, a recipe's test_interval) overrides the first."""
        return cls(param.test_interval if interval is None else interval, param.test_initialization)

    def due(self, iteration):
        return bool(self.interval) and iteration % self.interval == 0 and (iteration > 0 or self.initialization)

    def next_after(self, iteration):
        """The first iteration after ``iteration`` at which a pass is due (None: never)."""
        return next_multiple(iteration, self.interval)


def check_test_options(spec, iterations, interval, labels=("--test-iterations", "--test-interval")):
    """TEST passes asked for (``iterations``; ``interval`` above 0) need a
    test net: Caffe makes one per test_iter, and without one the passes
    would silently measure nothing."""
    if test_iterations(spec.param):
        return
    for label, value in zip(labels, (iterations, interval)):
        if value:
            raise InputError(f"{label} {value}: {spec.path} has no test net (no test_iter) to test with")


def evaluate(solver, counts, tied=()):
    """TEST phase: each output of each test net averaged over that net's
    count of batches, as Caffe reports them. The first net's outputs keep
    their names; net #i's are "#i/name" (solver_spec.test_output_name).
    ``tied``: tied_test_only_blobs, given the trained values first."""
    copy_trained(tied)
    results = {}
    for index, (net, count) in enumerate(zip(solver.test_nets, counts)):
        if count <= 0:
            continue
        # Caffe points the test net at the trained weights only inside its
        # own test passes, which caffedsd turns off.
        net.share_with(solver.net)
        sums = dict.fromkeys(net.outputs, 0.0)  # in the net's order: pycaffe's forward() returns a set's
        for _ in range(count):
            out = net.forward()
            for name in sums:
                sums[name] += float(out[name].mean())
        results.update((test_output_name(index, name), total / count) for name, total in sums.items())
    return results


def _trained_owners(solver, spec, index):
    """{param name: the train net's blob} of the names that the layers of
    test net #``index`` which the train net also has hold: a layer of phase
    TEST only with one shares that blob in the test net (Caffe ties names
    within one net: a test_net file's layer is tied to none of the train
    net's)."""
    owners = {}
    for layer in tested_net_layers(spec, index).values():
        trained = solver.net.params[layer.name] if layer.name in solver.net.params else ()
        for number, param in enumerate(layer.param[:len(trained)]):
            if param.name:
                owners.setdefault(param.name, trained[number])
    return owners


def tied_test_only_blobs(solver, spec):
    """[(test net blob, train net blob)] of the blobs of layers of phase
    TEST only that a param name ties to a trained blob. Caffe's test passes
    share the trained weights by layer name only: such a blob keeps what
    was loaded, and a TEST pass measured another net than the one written
    (test_only_records writes the trained values); evaluate copies them in."""
    pairs = []
    for index, (net, names) in enumerate(test_only_layers(solver)):
        params = tested_net_layers(spec, index) if names else {}
        owners = _trained_owners(solver, spec, index) if names else {}
        for name in names:
            for number, param in enumerate(params[name].param[:len(net.params[name])]):
                if param.name in owners:
                    pairs.append((net.params[name][number], owners[param.name]))
    return pairs


def copy_trained(tied):
    """Give the blobs of tied_test_only_blobs their trained values."""
    for mine, trained in tied:
        # share_mode PERMISSIVE ties blobs of one count in two shapes.
        mine.data[...] = trained.data.reshape(mine.data.shape)


def test_only_records(solver, spec):
    """[(LayerParameter, [arrays])] of the test nets' layers of phase TEST
    only, which the train net lacks, to be appended to what the train net
    writes: Caffe's own snapshots leave those out, and `caffe test` on the
    net would then fill them at random. Each from the test net
    test_only_params picks, its values as that net holds them: give tied
    ones the trained values first (copy_trained), or `caffe test`, which
    copies layers by name into the one tied blob, would take stale ones
    after the trained."""
    chosen = test_only_params(spec, set(solver.net.params), [names for _, names in test_only_layers(solver)])
    return [(written, [blob.data for blob in solver.test_nets[index].params[name]])
            for name, (index, written) in chosen.items()]
