"""Replaying what a solver's data layers (and the layers that draw from
Caffe's RNG) read up to an iteration, so that a run restored from a
snapshot reads the batches an uninterrupted one would."""

# Stock Caffe's layers that draw from Caffe's RNG as they run forward in the
# TRAIN phase, besides the data layers (not replayed: GPU stochastic pooling).
_RANDOM_TYPES = ("Dropout",)


def data_layers(net):
    """Indices of pycaffe Net ``net``'s layers without bottoms, wherever
    they come: its data layers (and DummyData, Input)."""
    return [index for index in range(len(net.layers)) if not list(net._bottom_ids(index))]


def replayed_layers(net):
    """Indices of ``net``'s layers whose runs change what later runs read or
    draw: the data layers, whose next batch depends only on how many they
    have made, and those drawing random numbers."""
    reading = set(data_layers(net))
    return [index for index, layer in enumerate(net.layers) if index in reading or layer.type in _RANDOM_TYPES]


def replay_batches(net, batches):
    """Run ``net``'s replayed_layers alone, ``batches`` times."""
    layers = replayed_layers(net)
    for _ in range(batches):
        for index in layers:
            net._forward(index, index)


def replay_data(solver, iter_size, counts, start, tests):
    """Make the data layers of a solver restored from a checkpoint read on
    from where the interrupted run's had got to. A solverstate holds the
    weights and history, not the data position (Caffe's own does not
    either), and HDF5Data reshuffles from the stage's seed.

    The run started at iteration ``start``, and the restored solver is at
    ``solver.iter``; each iteration read ``iter_size`` batches of the train
    net. ``tests``: the iterations at which a TEST pass ran, each reading
    ``counts[i]`` batches of test net i. Only the replayed_layers run, in
    the order the training ran them, so that the C library's rand()
    (HDF5Data's shuffle) and Caffe's RNG (DummyData, Dropout) are drawn as
    they were; a Dropout layer drops units of whatever its bottom holds,
    which the next real forward pass overwrites."""
    position = start
    for at in sorted(tests):
        replay_batches(solver.net, (at - position) * iter_size)
        for net, count in zip(solver.test_nets, counts):
            replay_batches(net, max(0, count))
        position = at
    replay_batches(solver.net, (int(solver.iter) - position) * iter_size)
