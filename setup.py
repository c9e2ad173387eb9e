from setuptools import find_packages, setup

setup(
    name="caffedsd",
    version="0.1.0",
    description="Dense-Sparse-Dense training and pruning for stock BVLC Caffe models",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="BSD-2-Clause",
    python_requires=">=3.9",
    packages=find_packages(include=["caffedsd", "caffedsd.*"]),
    package_data={"caffedsd": ["proto/caffe.proto", "proto/caffe.desc", "proto/LICENSE.caffe"]},
    # The floors: each one below fails (checked on Python 3.9 and 3.11).
    # protobuf: message_factory.GetMessageClass is 4.22's, and 4.22-4.24's
    # upb crashes on a message class of a private DescriptorPool after a
    # gc; matplotlib: rc text.parse_math is 3.6's; click: a group without a
    # command and CliRunner's stderr behave as the tests expect from 8.2.
    install_requires=[
        "numpy>=1.22",
        "protobuf>=4.25",
        "h5py>=3.6",
        "click>=8.2",
        "PyYAML>=6.0",
        "matplotlib>=3.6",
    ],
    extras_require={
        # What stock pycaffe imports at `import caffe` time (caffe/io.py needs skimage).
        "pycaffe": ["six", "scipy", "scikit-image"],
        # lmdb writes the LMDB databases the Data-layer tests read.
        "test": ["pytest>=7", "lmdb>=1.4"],
        # Device hooks (caffedsd/device.py): CuPy built for the CUDA major
        # version of the CUDA build of Caffe (`nvcc --version`, or `caffedsd
        # info`). This extra names the CUDA 13 wheel; for CUDA 12 install
        # cupy-cuda12x instead (pip install caffedsd cupy-cuda12x).
        "gpu": ["cupy-cuda13x"],
        "gpu-cuda12": ["cupy-cuda12x"],
        "gpu-cuda11": ["cupy-cuda11x"],  # the CUDA 11.8 build tools/check_cuda.sh compiles
    },
    entry_points={"console_scripts": ["caffedsd=caffedsd.__main__:main"]},
)
