"""Data sources a net reads, checked before Caffe (which aborts on them)."""
import pytest

from caffedsd.caffe_proto import read_net_prototxt
from caffedsd.errors import InputError
from caffedsd.netcheck import check_data_sources, check_layer_types


def _net(tmp_path, data_param):
    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "data" type: "Data" top: "data" top: "label" '
                    f'data_param {{ {data_param} batch_size: 4 }} }}\n')
    return read_net_prototxt(path), path


@pytest.fixture
def databases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train_lmdb").mkdir()
    (tmp_path / "train_lmdb" / "data.mdb").write_bytes(b"")
    (tmp_path / "train_leveldb").mkdir()
    (tmp_path / "train_leveldb" / "CURRENT").write_text("MANIFEST-000001\n")
    return tmp_path


def test_an_lmdb_read_with_the_default_backend(databases):
    net, path = _net(databases, 'source: "train_lmdb"')  # backend: LEVELDB is data_param's default
    for has_leveldb in (None, True, False):
        with pytest.raises(InputError, match=r"layer 'data' reads 'train_lmdb', an LMDB, with backend LEVELDB "
                                             r"\(data_param's default\): add `backend: LMDB`"):
            check_data_sources(net, path, has_leveldb)
    check_data_sources(*_net(databases, 'source: "train_lmdb" backend: LMDB'), has_leveldb=False)


def test_a_leveldb_needs_a_caffe_with_leveldb(databases):
    net, path = _net(databases, 'source: "train_leveldb"')
    check_data_sources(net, path, True)
    check_data_sources(net, path, None)  # not known: Caffe has the last word
    with pytest.raises(InputError, match="this Caffe was built without LevelDB"):
        check_data_sources(net, path, False)


def test_missing_sources(databases):
    with pytest.raises(InputError, match="reads 'nowhere_lmdb', which does not exist"):
        check_data_sources(*_net(databases, 'source: "nowhere_lmdb" backend: LMDB'))
    (databases / "list.txt").write_text("gone.h5\n")
    path = databases / "h5.prototxt"
    path.write_text('layer { name: "d" type: "HDF5Data" top: "data" hdf5_data_param { source: "list.txt" '
                    'batch_size: 4 } }\n')
    with pytest.raises(InputError, match="list.txt: lists 'gone.h5', which does not exist"):
        check_data_sources(read_net_prototxt(path), path)


def test_layer_types_the_caffe_lacks(tmp_path):
    net, path = _net(tmp_path, 'source: "x" backend: LMDB')
    check_layer_types(net, path, {"Data"})
    check_layer_types(net, path, None)  # a pycaffe that cannot list them
    with pytest.raises(InputError, match="layer 'data' has type 'Data', which this Caffe does not have"):
        check_layer_types(net, path, {"ImageData", "Convolution"})


def test_a_missing_mean_file(databases):
    net, path = _net(databases, 'source: "train_lmdb" backend: LMDB')
    net.layer[0].transform_param.mean_file = "data/ilsvrc12/imagenet_mean.binaryproto"
    with pytest.raises(InputError, match="layer 'data' subtracts the mean in "
                                         "'data/ilsvrc12/imagenet_mean.binaryproto', which does not exist"):
        check_data_sources(net, path)
    (databases / "mean.binaryproto").write_bytes(b"")
    net.layer[0].transform_param.mean_file = "mean.binaryproto"
    check_data_sources(net, path)
