"""The generated schema matches Caffe's field table and is up to date."""
import csv
import os
import subprocess
import sys

import pytest

from pycaffe_dist.proto import caffe_pb2

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
PROTO_DIR = os.path.join(ROOT, "pycaffe_dist", "proto")

TYPES = {
    "int32": "TYPE_INT32", "int64": "TYPE_INT64", "uint32": "TYPE_UINT32", "float": "TYPE_FLOAT",
    "double": "TYPE_DOUBLE", "bool": "TYPE_BOOL", "string": "TYPE_STRING", "bytes": "TYPE_BYTES",
}


def rows():
    with open(os.path.join(PROTO_DIR, "caffe_schema.tsv"), newline="") as f:
        return [r for r in csv.DictReader(f, delimiter="\t") if r["kind"] == "field"]


@pytest.mark.parametrize("row", rows(), ids=lambda r: r["scope"] + "." + r["name"])
def test_field_matches_caffe(row):
    message = getattr(caffe_pb2, row["scope"]).DESCRIPTOR
    field = message.fields_by_name[row["name"]]
    assert field.number == int(row["number"])
    label = {"optional": field.LABEL_OPTIONAL, "repeated": field.LABEL_REPEATED,
             "required": field.LABEL_REQUIRED}[row["label"]]
    assert field.label == label
    ftype = row["type"]
    if ftype.startswith("enum:"):
        assert field.type == field.TYPE_ENUM
        assert field.enum_type.full_name == "caffe." + ftype[5:]
    elif ftype in TYPES:
        assert field.type == getattr(field, TYPES[ftype])
    else:
        assert field.message_type.full_name == "caffe." + ftype
    if row["default"]:
        value = field.default_value
        if field.type == field.TYPE_ENUM:
            value = field.enum_type.values_by_number[value].name
        expected = row["default"]
        if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
            assert value == pytest.approx(float(expected), rel=1e-6)
        elif field.type == field.TYPE_BOOL:
            assert value == (expected == "true")
        elif field.type == field.TYPE_STRING:
            assert value == expected
        elif field.type != field.TYPE_ENUM:
            assert value == int(expected)
        else:
            assert value == expected
    if row["packed"] == "packed":
        # Wire format: a packed field is one length-delimited record.
        msg = getattr(caffe_pb2, row["scope"])()
        getattr(msg, row["name"]).extend([1, 2])
        tag = field.number << 3 | 2
        assert msg.SerializeToString()[0] == tag


def test_project_fields_stay_above_caffe_numbers():
    with open(os.path.join(PROTO_DIR, "project_fields.tsv"), newline="") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            if r["kind"] == "field" and r["scope"] in {x["scope"] for x in rows()}:
                assert int(r["number"]) >= 1000, r


def test_generated_files_are_up_to_date(tmp_path):
    gen = os.path.join(ROOT, "tools", "gen_proto.py")
    proto = tmp_path / "caffe.proto"
    subprocess.run([sys.executable, gen, str(proto)], check=True)
    with open(os.path.join(PROTO_DIR, "caffe.proto")) as f:
        assert proto.read_text() == f.read(), "caffe.proto is stale: run `make proto`"
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a test dependency: pip install -e .[test]")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(tmp_path),
                    "--python_out", str(tmp_path), str(proto)], check=True)
    with open(os.path.join(PROTO_DIR, "caffe_pb2.py")) as f:
        assert (tmp_path / "caffe_pb2.py").read_text() == f.read(), "caffe_pb2.py is stale: run `make proto`"
