"""Content-Encoding for request bodies and replies: gzip and deflate, one layer, bounded.

Request bodies are inflated with a streaming ``zlib.decompressobj`` whose output is
capped at ``limit + 1`` bytes: a decompression bomb costs at most that much memory before
it is refused with 413, however small the compressed body is.

``gzip`` and ``deflate`` are both inflated with zlib's automatic header detection (the
zlib or the gzip wrapper), as Triton does: a client that labels a gzip body ``deflate``
still works. Raw deflate streams (no wrapper) are refused as corrupt; HTTP's ``deflate``
means the zlib format (RFC 9110 §8.4.1.2) and that is what tritonclient sends.

Replies are compressed at level 1. Tensor payloads are mostly float bits that compress
little better at level 6 (Triton's default) while costing several times the CPU, and the
compression runs on the path that answers the client.

Response coding choice (``choose_encoding``): the highest ``q`` among ``identity``,
``gzip`` and ``deflate`` wins; ``q=0`` excludes; on equal ``q`` the one listed first wins
(Triton's rule, which honours the client's order); ``*`` stands for every coding the header
does not name, gzip before deflate. Identity, or nothing acceptable, means no compression.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from evserve.protocol.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# The reply header that tells a client what it may send instead.
ACCEPT_ENCODING_HEADER: tuple[tuple[str, str], ...] = (("Accept-Encoding", "gzip, deflate"),)

_CODINGS = ("gzip", "deflate")
# RFC 9110 §8.4.1.3: x-gzip is to be treated as gzip.
_ALIASES = {"x-gzip": "gzip"}
# 15-bit window with +32: zlib detects a zlib or a gzip wrapper by itself.
_AUTO_WBITS = zlib.MAX_WBITS | 32
_COMPRESS_WBITS = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
COMPRESS_LEVEL = 1


def _request_coding(content_encoding: str | None) -> str | None:
    """The one coding to undo, None for identity; 415 for anything else or for layers.

    Triton answers 501; the real binary's qa and RFC 9110 §15.5.16 agree a coding the server
    does not undo is the client's to change (415 with the codings it accepts), not a 5xx.
    """
    if content_encoding is None:
        return None
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [_ALIASES.get(c, c) for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _CODINGS:
        raise UnsupportedMediaType("Unsupported compression type", headers=ACCEPT_ENCODING_HEADER)
    return codings[0]


def decompress(
    body: bytes | bytearray | memoryview, content_encoding: str | None, limit: int
) -> bytes | bytearray | memoryview:
    """The request body with its Content-Encoding undone, at most ``limit`` bytes of it.

    Identity (or no header) returns ``body`` itself. Raises :class:`PayloadTooLarge` when
    the inflated body would exceed ``limit``, :class:`BadRequest` when the stream is
    corrupt, truncated or followed by extra bytes, :class:`Unsupported` for any coding
    other than one layer of gzip or deflate.
    """
    coding = _request_coding(content_encoding)
    if coding is None:
        return body
    if len(body) == 0:
        raise BadRequest(f"failed to decompress the request body: nothing to be decompressed ({coding})")
    inflater = zlib.decompressobj(_AUTO_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"failed to decompress the request body ({coding}): {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(
            f"Decompressed data size exceeds the maximum allowed value of {limit} bytes. "
            "Use --http-max-input-size to increase the limit."
        )
    if not inflater.eof:
        raise BadRequest(f"failed to decompress the request body ({coding}): the compressed stream is truncated")
    if inflater.unused_data:
        raise BadRequest(f"failed to decompress the request body ({coding}): extra bytes after the compressed stream")
    return out


def _parse_accept(accept_encoding: str) -> list[tuple[str, float]]:
    """(coding, q) pairs in header order; entries with a malformed q are dropped."""
    entries: list[tuple[str, float]] = []
    for item in accept_encoding.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        if not name:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() != "q":
                continue
            try:
                q = float(value.strip())
            except ValueError:
                q = -1.0
            if not 0.0 <= q <= 1.0:  # also false for NaN
                q = -1.0
        if q >= 0.0:
            entries.append((_ALIASES.get(name.lower(), name.lower()), q))
    return entries


def choose_encoding(accept_encoding: str | None) -> str | None:
    """``"gzip"``, ``"deflate"`` or None (identity) for a request's Accept-Encoding."""
    if not accept_encoding:
        return None
    entries = _parse_accept(accept_encoding)
    named = {name for name, _ in entries}
    best: str | None = None
    best_q = 0.0
    for name, q in entries:
        if name == "*":
            candidates = [c for c in (*_CODINGS, "identity") if c not in named]
        elif name in (*_CODINGS, "identity"):
            candidates = [name]
        else:
            continue
        for candidate in candidates:
            if q > best_q:
                best, best_q = candidate, q
    return None if best == "identity" else best


def compress(buffers: Iterable[bytes | bytearray | memoryview], encoding: str) -> bytes:
    """The concatenation of ``buffers`` compressed as ``gzip`` or ``deflate`` (zlib format)."""
    try:
        wbits = _COMPRESS_WBITS[encoding]
    except KeyError:
        raise ValueError(f"cannot compress with '{encoding}'") from None
    deflater = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, wbits)
    parts = [deflater.compress(buffer) for buffer in buffers]
    parts.append(deflater.flush())
    return b"".join(parts)
