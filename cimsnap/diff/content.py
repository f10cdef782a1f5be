"""Reading layer blobs out of containerd's content store, digest verified.

Two ways in, chosen per blob by :class:`ContainerdContent`:

* **gRPC** (always available): ``Content.Info`` then a prefetched ``Content.Read`` stream
  on containerd's socket, in the blob's namespace (§5.4).
* **Content directory fast path** (``content_dir`` configured, e.g.
  ``/var/lib/containerd/io.containerd.content.v1.content``): the blob file
  ``blobs/sha256/<hex>`` is read directly, skipping gRPC framing and copies.
  [choice] The directory is shared by every namespace, so ``Content.Info`` is still asked
  first: a namespace that has not registered the blob gets NotFound, exactly as over gRPC.
  The file is used only when it exists, is a regular file and has the size Info reported;
  otherwise the gRPC stream is used.

:meth:`Blob.verify` (called by the differ once everything was consumed) raises
InvalidArgument when the size read is not the blob's size, and, for the content-directory
path, when the bytes do not hash to the digest (the file is read behind containerd's back:
it could be damaged or replaced). [choice] Over gRPC the compressed bytes are not hashed
again: containerd verified the digest at ingest and serves its own verified copy (§5.4
calls the check optional), and on a 2-core host the second SHA-256 of a 1 GiB layer costs
more than the whole gRPC transfer; gzip's and zstd's own checksums still catch damage.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Final, Protocol

from cimsnap.diff.containerd import Containerd
from cimsnap.errdefs import InvalidArgument

__all__ = ["Blob", "BlobSource", "ContainerdContent", "blob_path"]

_FILE_CHUNK: Final = 1024 * 1024


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


class Blob:
    """A blob being read: ``read(n)`` counts (and hashes) as it goes; ``verify()`` checks.

    ``via`` says where the bytes come from (``"grpc"`` or ``"content-dir"``).
    """

    def __init__(
        self, reader: _Readable, digest: str, size: int, via: str, *, hashed: bool
    ) -> None:
        self._reader = reader
        self.digest = digest
        self.size = size
        self.via = via
        self._hash = hashlib.sha256() if hashed else None
        self.position = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._reader.read(n)
        if self._hash is not None:
            self._hash.update(data)
        self.position += len(data)
        return data

    def verify(self) -> None:
        """Read what is left, then InvalidArgument unless the size (and digest) match."""
        while self.read(_FILE_CHUNK):
            pass
        actual = "sha256:" + self._hash.hexdigest() if self._hash is not None else self.digest
        if self.position != self.size or actual != self.digest:
            raise InvalidArgument(
                f"blob {self.digest}: content does not match its descriptor "
                f"(read {self.position} of {self.size} bytes, digest {actual})"
            )

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Blob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobSource(Protocol):
    """Opens a blob of ``namespace`` by digest (NotFound when the namespace lacks it)."""

    def open(self, namespace: str, digest: str) -> Blob: ...


def blob_path(content_dir: Path, digest: str) -> Path:
    """Path of ``digest``'s blob in a containerd content directory (digest pre-checked)."""
    algorithm, _, hexdigest = digest.partition(":")
    return content_dir / "blobs" / algorithm / hexdigest


class ContainerdContent:
    """Blobs of the containerd at ``address`` (plus the optional ``content_dir`` fast path)."""

    def __init__(self, address: str, content_dir: Path | None = None) -> None:
        self.address = address
        self.content_dir = content_dir

    def client(self, namespace: str, lease: str | None = None) -> Containerd:
        """A connection to containerd in ``namespace`` (the caller closes it)."""
        return Containerd(self.address, namespace, lease=lease)

    def open(self, namespace: str, digest: str) -> Blob:
        """Open ``digest`` in ``namespace``; NotFound if missing, Unavailable if unreachable."""
        if not namespace:
            raise InvalidArgument(f"blob {digest}: no namespace to read it in")
        with self.client(namespace) as ctd:
            _, size, _ = ctd.content_info(digest)
        if self.content_dir is not None:
            blob = self._open_file(digest, size)
            if blob is not None:
                return blob
        ctd = self.client(namespace)
        try:
            reader = ctd.read_content(digest)
        except BaseException:
            ctd.close()
            raise
        return Blob(_ClosingReader(reader, ctd), digest, size, "grpc", hashed=False)

    def _open_file(self, digest: str, size: int) -> Blob | None:
        assert self.content_dir is not None
        path = blob_path(self.content_dir, digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                os.close(fd)
                return None
            reader = os.fdopen(fd, "rb", buffering=_FILE_CHUNK)
        except BaseException:
            os.close(fd)
            raise
        return Blob(reader, digest, size, "content-dir", hashed=True)


class _ClosingReader:
    """A Content.Read stream that also closes its connection."""

    def __init__(self, reader: _Readable, ctd: Containerd) -> None:
        self._reader = reader
        self._ctd = ctd

    def read(self, n: int = -1, /) -> bytes:
        return self._reader.read(n)

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            self._ctd.close()
