from __future__ import annotations

import gzip
import zlib

import pytest

from evserve.protocol.compression import choose_encoding, compress, decompress
from evserve.protocol.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

PAYLOAD = b'{"inputs":[]}' * 100


@pytest.mark.parametrize("header", [None, "", "identity", " Identity "])
def test_identity_returns_the_body_itself(header):
    body = bytearray(b"abc")
    assert decompress(body, header, limit=10) is body


@pytest.mark.parametrize(
    ("header", "packed"),
    [
        ("gzip", gzip.compress(PAYLOAD)),
        ("GZIP", gzip.compress(PAYLOAD)),
        ("x-gzip", gzip.compress(PAYLOAD)),
        ("deflate", zlib.compress(PAYLOAD)),
        # Triton inflates with header auto-detection; so do we.
        ("deflate", gzip.compress(PAYLOAD)),
        ("gzip", zlib.compress(PAYLOAD)),
        ("identity, gzip", gzip.compress(PAYLOAD)),
    ],
)
def test_gzip_and_deflate_inflate(header, packed):
    assert bytes(decompress(packed, header, limit=len(PAYLOAD))) == PAYLOAD
    assert bytes(decompress(memoryview(packed), header, limit=len(PAYLOAD))) == PAYLOAD


def test_bomb_is_refused_after_at_most_limit_plus_one_bytes():
    limit = 1 << 20
    bomb = gzip.compress(b"\x00" * (4 * limit), compresslevel=9)
    assert len(bomb) < limit // 100
    with pytest.raises(PayloadTooLarge) as info:
        decompress(bomb, "gzip", limit=limit)
    assert info.value.status == 413
    assert info.value.message == (
        f"Decompressed data size exceeds the maximum allowed value of {limit} bytes. "
        "Use --http-max-input-size to increase the limit."
    )


def test_exactly_the_limit_is_accepted():
    assert len(decompress(zlib.compress(b"a" * 1000), "deflate", limit=1000)) == 1000
    with pytest.raises(PayloadTooLarge):
        decompress(zlib.compress(b"a" * 1001), "deflate", limit=1000)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (gzip.compress(PAYLOAD)[:-9], "truncated"),
        (zlib.compress(PAYLOAD)[:5], "truncated"),
        (b"not compressed at all", "failed to decompress"),
        (zlib.compress(PAYLOAD)[2:], "failed to decompress"),  # raw deflate: no zlib wrapper
        (gzip.compress(PAYLOAD) + b"trailing", "extra bytes"),
        (gzip.compress(PAYLOAD) * 2, "extra bytes"),
        (b"", "nothing to be decompressed"),
    ],
)
def test_corrupt_or_truncated_streams_are_400(body, message):
    with pytest.raises(BadRequest) as info:
        decompress(body, "gzip", limit=1 << 20)
    assert info.value.status == 400
    assert message in info.value.message


@pytest.mark.parametrize("header", ["br", "compress", "zstd", "gzip, gzip", "deflate, gzip", "gzip;q=1", "*"])
def test_other_codings_and_layers_are_415_with_accept_encoding(header):
    with pytest.raises(UnsupportedMediaType) as info:
        decompress(gzip.compress(PAYLOAD), header, limit=1 << 20)
    assert info.value.status == 415
    assert info.value.message == "Unsupported compression type"
    assert info.value.headers == (("Accept-Encoding", "gzip, deflate"),)


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, None),
        ("", None),
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("identity", None),
        ("br", None),
        ("gzip, deflate", "gzip"),
        ("deflate, gzip", "deflate"),  # equal q: the first listed wins, as in Triton
        ("gzip;q=0.5, deflate;q=0.8", "deflate"),
        ("gzip; q=0.9 , deflate ; q=0.1", "gzip"),
        ("gzip;q=0", None),
        ("gzip;q=0, deflate", "deflate"),
        ("identity, gzip;q=0.5", None),
        ("gzip;q=0.5, identity;q=0.9", None),
        ("*", "gzip"),
        ("*;q=0.5, gzip;q=0.1", "deflate"),
        ("gzip;q=0, *", "deflate"),
        ("*;q=0", None),
        ("GZIP", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip;q=abc, deflate;q=0.1", "deflate"),
        ("gzip;q=2, deflate;q=0.1", "deflate"),
        ("gzip;q=nan", None),
        ("gzip;level=1", "gzip"),
        (",,;q=1, ,", None),
        ("br;q=1, deflate;q=0.3", "deflate"),
    ],
)
def test_choose_encoding(header, chosen):
    assert choose_encoding(header) == chosen


def test_compress_round_trips_through_the_standard_decoders():
    buffers = [b"head", memoryview(bytearray(b"\x01\x02" * 1000)), b""]
    joined = b"".join(bytes(b) for b in buffers)
    assert gzip.decompress(compress(buffers, "gzip")) == joined
    assert zlib.decompress(compress(buffers, "deflate")) == joined
    assert bytes(decompress(compress(buffers, "gzip"), "gzip", limit=len(joined))) == joined
    with pytest.raises(ValueError):
        compress(buffers, "br")
