"""pycaffe_dist: Caffe's nets, files and tools in Python, trained at scale."""
__version__ = "0.1.0"
