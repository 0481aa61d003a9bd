from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from evserve.protocol.datatypes import (
    DATATYPES,
    config_to_protocol,
    datatype_of,
    deserialize_bytes,
    itemsize,
    numpy_dtype,
    protocol_to_config,
    serialize_bytes,
)
from evserve.protocol.errors import BadRequest

WIDTHS = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BF16": 2,
}


def test_all_fourteen_datatypes_are_listed_once():
    assert len(DATATYPES) == 14
    assert set(DATATYPES) == set(WIDTHS) | {"BYTES"}


@pytest.mark.parametrize("datatype", sorted(WIDTHS))
def test_fixed_size_datatypes_have_little_endian_carriers(datatype):
    dtype = numpy_dtype(datatype)
    assert itemsize(datatype) == WIDTHS[datatype] == dtype.itemsize
    assert dtype.byteorder in ("<", "|", "=")


def test_special_carriers():
    assert numpy_dtype("BYTES") == np.dtype(object)
    assert itemsize("BYTES") is None
    assert numpy_dtype("BF16") == np.dtype("<u2")
    assert numpy_dtype("BOOL") == np.dtype(bool)


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BF16"])
def test_datatype_of_inverts_numpy_dtype(datatype):
    assert datatype_of(numpy_dtype(datatype)) == datatype


def test_datatype_of_other_dtypes():
    assert datatype_of(np.dtype(">i4")) == "INT32"
    assert datatype_of(np.dtype("S5")) == "BYTES"
    assert datatype_of(np.dtype("U3")) == "BYTES"
    assert datatype_of(np.dtype("<u2")) == "UINT16"
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert datatype_of(np.dtype(ml_dtypes.bfloat16)) == "BF16"
    with pytest.raises(ValueError):
        datatype_of(np.dtype(np.complex64))


def test_unknown_names_raise_value_error():
    for call, arg in ((numpy_dtype, "FP8"), (config_to_protocol, "TYPE_FOO"), (protocol_to_config, "STRING")):
        with pytest.raises(ValueError):
            call(arg)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_config_names_round_trip(datatype):
    config = protocol_to_config(datatype)
    assert config.startswith("TYPE_")
    assert config_to_protocol(config) == datatype


def test_bytes_is_type_string_in_configs():
    assert protocol_to_config("BYTES") == "TYPE_STRING"
    assert config_to_protocol("TYPE_STRING") == "BYTES"
    assert config_to_protocol("TYPE_BF16") == "BF16"


def test_serialize_bytes_matches_tritonclient():
    array = np.array([[b"", b"a\x00b"], [b"\xff" * 300, b"hello"]], dtype=object)
    ours = serialize_bytes(array)
    assert ours == serialize_byte_tensor(array).item()
    assert ours[:4] == struct.pack("<I", 0)


def test_serialize_bytes_accepts_str_and_other_objects():
    array = np.array(["héllo", 7, bytearray(b"xy")], dtype=object)
    assert serialize_bytes(array) == b"\x06\x00\x00\x00h\xc3\xa9llo\x01\x00\x00\x007\x02\x00\x00\x00xy"
    assert serialize_bytes(np.array([b"ab", b"c"], dtype="S2")) == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    assert serialize_bytes(np.empty((0, 3), dtype=object)) == b""


def test_deserialize_bytes_round_trip_and_matches_tritonclient():
    items = [b"", b"x", b"\x00\x01\x02", "é".encode()]
    wire = serialize_bytes(np.array(items, dtype=object))
    ours = deserialize_bytes(wire)
    assert ours.dtype == object and ours.shape == (4,)
    assert ours.tolist() == items == deserialize_bytes_tensor(wire).tolist()
    assert deserialize_bytes(memoryview(bytearray(wire)), count=4).tolist() == items
    assert deserialize_bytes(b"", count=0).shape == (0,)


@pytest.mark.parametrize(
    ("buf", "count", "message"),
    [
        (b"\x01\x00", None, "incomplete string length indicator"),
        (b"\x05\x00\x00\x00abc", None, "declares 5 bytes but only 3 bytes remain"),
        (b"\xff\xff\xff\xff", None, "declares 4294967295 bytes"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00b", 1, "unexpected number of string elements"),
        (b"\x01\x00\x00\x00a\x00\x00\x00\x00", 3, "expected 3 string elements"),
        (b"\x00\x00\x00\x00", 2, "expected 2 string elements"),
        (b"", 1, "expected 1 string elements"),
    ],
)
def test_deserialize_bytes_refuses_garbage(buf, count, message):
    with pytest.raises(BadRequest) as info:
        deserialize_bytes(buf, count)
    assert message in info.value.message
    assert info.value.status == 400


def test_deserialize_bytes_refuses_a_count_the_buffer_cannot_hold_without_looping():
    with pytest.raises(BadRequest, match="cannot hold"):
        deserialize_bytes(b"\x00" * 8, count=10**12)
