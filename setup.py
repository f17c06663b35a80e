from setuptools import find_packages, setup

setup(
    name="pycaffe_dist",
    version="0.1.0",
    description="Caffe's nets, files and tools in Python, trained at scale (Hogwild, NCCL, MPI).",
    packages=find_packages(include=["pycaffe_dist", "pycaffe_dist.*"]),
    package_data={"pycaffe_dist.proto": ["*.proto", "*.tsv"]},
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.24",
        # The runtime and the generator that wrote caffe_pb2.py are pinned together.
        "protobuf==5.29.6",
        "Pillow>=9",
        "tqdm>=4.60",
        # Hogwild threads and the ops' thread pool hold BLAS to one thread through it.
        "threadpoolctl>=3",
    ],
    extras_require={
        "lmdb": ["lmdb>=1.4"],
        "mpi": ["mpi4py>=4.0", "mpich"],
        "hdf5": ["h5py>=3"],
        # plot_log; draw_net needs graphviz's `dot` program (apt-get install graphviz), no Python package.
        "plot": ["matplotlib>=3.5"],
        "test": ["pytest>=7", "hypothesis>=6", "ruff>=0.5", "grpcio-tools==1.71.0", "grpcio==1.71.0",
                 "matplotlib>=3.5", "h5py>=3"],
        "bench": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["pycaffe-dist=pycaffe_dist.cli:main"]},
)
