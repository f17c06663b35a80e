"""Caffe's schema (caffe_pb2) and readers/writers for its files."""
from . import caffe_pb2  # noqa: F401
