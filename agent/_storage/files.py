"""File operations of the store: copies in the kernel, preallocation, fsync, the small
records a version directory carries, and the process's pool of fsync/verify threads."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent._storage.paths import confine
from protocol import Manifest

__all__ = ["TMP_PREFIX", "copy_range", "create_file", "fsync_path", "hold", "in_use", "io_pool",
           "no_space", "preallocate", "read_record", "write_all", "write_record"]

TMP_PREFIX = ".tmp-"   # a file or directory being written; removed at open if left
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_SYNC_THREADS = 8
_BLOCK = 4096
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def io_pool() -> ThreadPoolExecutor:
    """The process's pool of fsync/verify threads, started on first use and kept."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_SYNC_THREADS,
                                       thread_name_prefix="shoal-fsync")
        return _pool


def hold(path: str | Path) -> int:
    """Open ``path`` (a temporary file or directory being written) and take an exclusive
    ``flock`` on it: another process opening the store sees it in use (:func:`in_use`)
    and leaves it alone. Closing the descriptor lets it go."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def in_use(path: str | Path) -> bool:
    """Is ``path`` held by a writer (:func:`hold`), in this process or another?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return False


def no_space(exc: OSError) -> bool:
    return exc.errno in _NO_SPACE


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


_IOV_MAX = 1024          # buffers one preadv / pwritev may take (Linux's UIO_MAXIOV)


def back_to_back(spans: Sequence[tuple[object, int, int]]) -> Iterator[tuple[int, int]]:
    """``(i, j)`` for each group ``spans[i:j]`` of ``(file, offset, length)`` that lie
    back to back in one file, in the order given: one ``preadv`` / ``pwritev`` each (at
    most ``_IOV_MAX`` spans a group)."""
    i = 0
    while i < len(spans):
        name, start, length = spans[i]
        end = start + length
        j = i + 1
        while j < len(spans) and spans[j][0] == name and spans[j][1] == end \
                and j - i < _IOV_MAX:
            end += spans[j][2]
            j += 1
        yield i, j
        i = j


def pwrite_runs(writes: list[tuple[int, int, bytes | memoryview, int]]) -> dict[int, OSError]:
    """Make the writes ``(fd, offset, bytes, tag)``: ranges that lie back to back in one
    file go out in one ``pwritev`` (a short one is finished piece by piece). The tags of
    the writes that failed, with why (a failed ``pwritev`` fails all of its writes)."""
    failed: dict[int, OSError] = {}
    writes = sorted(writes, key=lambda w: (w[0], w[1]))
    for i, j in back_to_back([(fd, off, len(data)) for fd, off, data, _ in writes]):
        group = writes[i:j]
        fd, start = group[0][0], group[0][1]
        try:
            done = start + os.pwritev(fd, [w[2] for w in group], start)
            for _, off, piece, _ in group:
                if off + len(piece) > done:       # (short: the rest of it)
                    skip = max(0, done - off)
                    write_all(fd, memoryview(piece)[skip:], off + skip)
        except OSError as exc:
            for w in group:
                failed[w[3]] = exc
    return failed


def copy_range(src: int, dst: int, src_off: int, dst_off: int, length: int) -> None:
    """Copy ``length`` bytes between two open files, in the kernel where it can
    (``copy_file_range``: on XFS and btrfs the block-aligned part shares extents)."""
    # copy up to the next block boundary by hand so that the rest starts aligned
    # (a reflink needs both offsets on a block boundary)
    if (src_off - dst_off) % _BLOCK == 0 and dst_off % _BLOCK:
        head = min(length, _BLOCK - dst_off % _BLOCK)
        write_all(dst, os.pread(src, head, src_off), dst_off)
        src_off, dst_off, length = src_off + head, dst_off + head, length - head
    while length > 0:
        try:
            n = os.copy_file_range(src, dst, length, src_off, dst_off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                 errno.EBADF):
                raise
            n = 0
        if n <= 0:      # not supported here (or a short source): copy through memory
            data = os.pread(src, min(length, 8 << 20), src_off)
            if not data:
                raise OSError(errno.EIO, "source shorter than expected")
            write_all(dst, data, dst_off)
            n = len(data)
        src_off, dst_off, length = src_off + n, dst_off + n, length - n


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``length`` dirty bytes at ``offset`` back to the disk without
    waiting for them (Linux starts writeback on ``POSIX_FADV_DONTNEED`` and drops only
    the pages already clean), so that a later ``fsync`` has less left to wait for."""
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def copy_range_flushing(src: int, dst: int, length: int, step: int = 32 << 20,
                        offset: int = 0) -> None:
    """:func:`copy_range` of ``length`` bytes at ``offset`` (the same in both files),
    ``step`` bytes at a time, each step's writeback started as soon as it is copied."""
    off, end = offset, offset + length
    while off < end:
        n = min(step, end - off)
        copy_range(src, dst, off, off, n)
        start_writeback(dst, off, n)
        off += n


def read_record(path: str) -> tuple[str, str] | None:
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("manifest_id"), str) \
            or not isinstance(rec.get("variant_id"), str):
        return None
    return rec["manifest_id"], rec["variant_id"]


def write_record(path: str, manifest: Manifest, variant_id: str, fsync: bool = True) -> None:
    rec = {"manifest_id": manifest.manifest_id, "model_id": manifest.model_id,
           "version": manifest.version, "variant_id": variant_id}
    with open(path, "x", encoding="utf-8") as f:
        json.dump(rec, f)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def create_file(root: Path, rel: str, executable: bool) -> int:
    """Create ``root/rel`` (its parents too), confined to ``root``; an open fd."""
    target = confine(root, rel)
    if target.parent != root:
        os.makedirs(target.parent, exist_ok=True)
        confine(root, rel)        # re-check now that the parents exist
    mode = 0o755 if executable else 0o644
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    os.fchmod(fd, mode)
    return fd


def preallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
