"""Content-defined chunking (FastCDC) and chunk hashing (BLAKE3).

Theory of operation
-------------------
A model file is cut into chunks by FastCDC: a rolling "gear" hash runs over the
bytes and a chunk ends where the hash matches a mask (with a minimum and a
maximum size, and FastCDC's normalisation around the average). Because the cut
points depend on the content and not on offsets, an insertion near the start of
a file shifts bytes but moves only the cut points around the edit; every later
chunk keeps its bytes and therefore its BLAKE3 name, and a node that already
holds those chunks fetches only the few new ones. That *is* the delta transfer.

The compiled ``fastcdc`` chunker has no streaming API, so :func:`chunk_stream`
builds one. FastCDC decides a cut by scanning forward from the start of the
chunk, and never looks further than ``max_size`` bytes past it. So when a
window of the file is chunked on its own, every chunk that ends *before* the
window's end was cut exactly as whole-file chunking would cut it; only the last
chunk of the window may have been cut short by the window's end. That chunk is
carried over and becomes the start of the next window. (A last chunk that is
``max_size`` long is complete too: the cut is forced there whatever follows.)
The result is byte-for-byte the chunking of the whole file, with memory bounded
by the window (at most about two windows during the copy that joins the carried
tail to the next read), whatever the file size.

The pure-Python fallback of ``fastcdc`` is about 200 times slower than the
Cython build; publishing a model with it would take hours, so
:func:`require_compiled_fastcdc` refuses it loudly and the chunkers call it.

Parameters are validated here: ``fastcdc`` checks them only with ``assert``,
which disappears under ``python -O``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import blake3

from ._errors import InvalidValue, ShoalError
from ._manifest import HASH_SIZE, ChunkRef

__all__ = [
    "MAX_CHUNK_SIZE",
    "DEFAULT_WINDOW",
    "ChunkParams",
    "DEFAULT_PARAMS",
    "require_compiled_fastcdc",
    "hash_chunk",
    "chunk_view",
    "cut_view",
    "hash_cuts",
    "chunk_matches",
    "chunk_stream",
    "chunk_bytes",
]

#: Largest chunk the protocol carries: one chunk must fit a frame (8 MiB) with headroom.
MAX_CHUNK_SIZE = 4 * 1024 * 1024
#: Default bytes of the file held at once by :func:`chunk_stream`.
DEFAULT_WINDOW = 64 * 1024 * 1024
_READ_SIZE = 4 * 1024 * 1024  # bytes asked of ``read`` at a time

# FastCDC's own limits (fastcdc_cy.pyx): MINIMUM_MIN, AVERAGE_MIN, MAXIMUM_MIN.
_FASTCDC_MIN_MIN = 64
_FASTCDC_AVG_MIN = 256
_FASTCDC_MAX_MIN = 1024
_COMPILED_MODULE = "fastcdc.fastcdc_cy"


def _load_fastcdc() -> Callable[..., Any] | None:
    """The chunker ``fastcdc`` exports: the Cython one, or its pure-Python fallback."""
    try:
        from fastcdc import fastcdc
    except ImportError:  # pragma: no cover - the dependency is declared
        return None
    return fastcdc  # type: ignore[no-any-return]


_cdc = _load_fastcdc()


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """FastCDC sizes in bytes: ``min_size <= avg_size <= max_size``."""

    min_size: int
    avg_size: int
    max_size: int

    def __post_init__(self) -> None:
        for name in ("min_size", "avg_size", "max_size"):
            value = getattr(self, name)
            if type(value) is not int:
                raise InvalidValue(f"chunk {name} must be an int, not {type(value).__name__}")
        if self.min_size < _FASTCDC_MIN_MIN:
            raise InvalidValue(f"chunk min_size {self.min_size} is below {_FASTCDC_MIN_MIN}")
        if self.avg_size < _FASTCDC_AVG_MIN:
            raise InvalidValue(f"chunk avg_size {self.avg_size} is below {_FASTCDC_AVG_MIN}")
        if self.max_size < _FASTCDC_MAX_MIN:
            raise InvalidValue(f"chunk max_size {self.max_size} is below {_FASTCDC_MAX_MIN}")
        if self.max_size > MAX_CHUNK_SIZE:
            raise InvalidValue(f"chunk max_size {self.max_size} exceeds the protocol limit "
                               f"of {MAX_CHUNK_SIZE} bytes (a chunk must fit one frame)")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise InvalidValue(f"chunk sizes must satisfy min <= avg <= max, got "
                               f"{self.min_size} / {self.avg_size} / {self.max_size}")

    @classmethod
    def around(cls, avg_size: int) -> ChunkParams:
        """The usual shape: ``min = avg / 4``, ``max = avg * 4``."""
        return cls(avg_size // 4, avg_size, avg_size * 4)


#: Chosen by measurement: see docs/CHUNKING.md and benchmarks/bench_chunking.py.
DEFAULT_PARAMS = ChunkParams.around(128 * 1024)


def require_compiled_fastcdc() -> None:
    """Raise :class:`ShoalError` unless the compiled (Cython) FastCDC is in use."""
    if _cdc is None:
        raise ShoalError("the fastcdc package is not installed; install fastcdc>=1.5 "
                         "(a wheel with its compiled chunker)")
    module = getattr(_cdc, "__module__", "")
    if module != _COMPILED_MODULE:
        raise ShoalError(
            f"fastcdc is running its pure-Python fallback ({module or 'unknown'}), about 200x "
            "slower than the compiled chunker; install a fastcdc wheel built for this "
            "platform and Python (pip install --force-reinstall --only-binary=:all: fastcdc)"
        )


def hash_chunk(data: bytes | memoryview) -> bytes:
    """The name of a chunk: its BLAKE3 hash, 32 bytes."""
    return blake3.blake3(data).digest()


def chunk_matches(chunk_hash: bytes, size: int, data: bytes | memoryview) -> bool:
    """True when ``data`` is exactly the chunk named ``(chunk_hash, size)``."""
    return (len(chunk_hash) == HASH_SIZE and len(data) == size
            and hash_chunk(data) == chunk_hash)


def _cuts(data: memoryview, params: ChunkParams) -> Iterator[tuple[int, int]]:
    """(offset, length) of each FastCDC chunk of ``data``."""
    assert _cdc is not None  # require_compiled_fastcdc() ran
    for c in _cdc(data, params.min_size, params.avg_size, params.max_size):
        yield c.offset, c.length


def cut_view(view: memoryview, params: ChunkParams = DEFAULT_PARAMS, *,
             eof: bool = True) -> tuple[list[tuple[int, int]], int]:
    """The ``(offset, length)`` of each chunk of one window of a stream, and how many
    bytes of it they cover; :func:`chunk_view` without the hashing.

    Unless ``eof``, a last chunk that ends where ``view`` ends and is shorter than
    ``max_size`` may have been cut short by the window: it is left out, and the next
    window starts at the returned offset. Windows of at least ``max_size`` bytes give
    exactly the boundaries of :func:`chunk_bytes` on the whole content (what
    :func:`chunk_stream` does, without copying: ``view`` may be a mapped file).
    """
    require_compiled_fastcdc()
    assert _cdc is not None
    if not eof and len(view) < params.max_size:
        raise InvalidValue(f"a chunking window of {len(view)} bytes is below max_size "
                           f"({params.max_size} bytes)")
    found: list[tuple[int, int]] = []
    consumed = 0
    cuts = _cdc(view, params.min_size, params.avg_size, params.max_size)
    try:
        for c in cuts:
            end = c.offset + c.length
            if end == len(view) and not eof and c.length < params.max_size:
                break
            found.append((c.offset, c.length))
            consumed = end
    finally:
        cuts.close()
    return found, consumed


def hash_cuts(view: memoryview, cuts: list[tuple[int, int]]) -> list[ChunkRef]:
    """The chunk of ``view`` at each ``(offset, length)``, named."""
    return [ChunkRef(hash_chunk(view[off:off + size]), size) for off, size in cuts]


def chunk_view(view: memoryview, params: ChunkParams = DEFAULT_PARAMS, *,
               eof: bool = True) -> tuple[list[ChunkRef], int]:
    """The chunks of one window of a stream, and how many bytes of it they cover
    (:func:`cut_view`, each chunk then hashed)."""
    cuts, consumed = cut_view(view, params, eof=eof)
    return hash_cuts(view, cuts), consumed


def chunk_bytes(data: bytes, params: ChunkParams = DEFAULT_PARAMS) -> list[ChunkRef]:
    """Chunk an in-memory buffer; the chunk list in order (empty for no bytes)."""
    require_compiled_fastcdc()
    if not data:
        return []
    view = memoryview(data)
    return [ChunkRef(hash_chunk(view[off:off + size]), size)
            for off, size in _cuts(view, params)]


def chunk_stream(read: Callable[[int], bytes], params: ChunkParams = DEFAULT_PARAMS,
                 window: int = DEFAULT_WINDOW) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(hash, chunk_bytes)`` for a stream, in order, holding about ``window`` bytes.

    ``read(n)`` returns up to ``n`` bytes and ``b""`` at the end (a file's ``.read``).
    The boundaries are exactly those of :func:`chunk_bytes` on the whole content.
    Memory: one buffer of at most ``window`` bytes (grown as needed, so a small file
    costs little), one read of at most 4 MiB and the chunk being yielded.
    """
    require_compiled_fastcdc()
    assert _cdc is not None
    if type(window) is not int or window < params.max_size:
        raise InvalidValue(f"chunking window {window!r} must be an int of at least "
                           f"max_size ({params.max_size} bytes)")
    buf = bytearray()  # carried tail of the last window + new reads, in buf[:have]
    have = 0
    eof = False
    while not eof:
        while have < window:
            block = read(min(window - have, _READ_SIZE))
            if not block:
                eof = True
                break
            if have + len(block) > len(buf):
                # grow once to the full window (a small file never gets here twice);
                # a fixed buffer is then reused, never reallocated
                grown = bytearray(window if buf or len(block) == _READ_SIZE
                                  else have + len(block))
                grown[:have] = buf[:have]
                buf = grown
            buf[have:have + len(block)] = block
            have += len(block)
        if not have:
            return
        consumed = 0
        view = memoryview(buf)[:have]
        cuts = _cdc(view, params.min_size, params.avg_size, params.max_size)
        try:
            for c in cuts:
                end = c.offset + c.length
                if end == have and not eof and c.length < params.max_size:
                    break  # possibly cut short by the window: carry it into the next one
                piece = view[c.offset:end]
                yield hash_chunk(piece), bytes(piece)  # hashed where the chunker left it hot
                consumed = end
        finally:
            cuts.close()  # drop fastcdc's slices of the buffer before it is written again
            view.release()
        buf[:have - consumed] = buf[consumed:have]
        have -= consumed
