"""Write the seed corpus of the ``tar_reader`` fuzz target.

Run once (``python -m tests.fuzz.seed_tar_reader``); the files are committed under
``tests/fuzz/corpus/tar_reader/`` (seed-*). They are tiny layer tars in the Windows PAX
dialect: a base-like layer (directory, file with an alternate stream, EAs, raw and SDDL
security descriptors, creation/mtime/atime/ctime, symlink, junction, hard link), a delta
with whiteouts and a global header, a GNU long-name tar, the base gzipped and
zstd-compressed, and a truncated copy.
"""

from __future__ import annotations

import base64
import gzip
import io
import tarfile

import zstandard

from tests.fuzz.runner import CORPUS

# A self-relative SD with only an owner (BUILTIN\Administrators) and no DACL.
_SD = bytes.fromhex("010000800000000000000000000000001400000001020000000000052000000020020000")
_TIMES = {
    "LIBARCHIVE.creationtime": "1600000000.1234567",
    "mtime": "1700000000.5",
    "atime": "1700000001",
    "ctime": "-1.25",
}


def _tar(entries: list[tuple[str, bytes, str, str, dict[str, str]]], fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data, kind, link, pax in entries:
            info = tarfile.TarInfo(name)
            info.type = kind.encode()
            info.size = len(data)
            info.linkname = link
            info.pax_headers = pax
            tar.addfile(info, io.BytesIO(data) if data else None)
    # tarfile pads to 10 KiB records; keep only the end-of-archive marker (small seeds
    # keep libFuzzer's inputs short).
    body = out.getvalue().rstrip(b"\0")
    return body.ljust(-(-len(body) // 512) * 512 + 1024, b"\0")


def _base() -> bytes:
    raw = base64.b64encode(_SD).decode()
    return _tar(
        [
            ("Files", b"", "5", "", {"MSWINDOWS.fileattr": "16", **_TIMES}),
            (
                "Files/a.txt",
                b"hello",
                "0",
                "",
                {"MSWINDOWS.rawsd": raw, "MSWINDOWS.xattr.Ea": "AQI=", **_TIMES},
            ),
            ("Files/a.txt:s:$DATA", b"alt", "0", "", {}),
            ("Files/b.txt", b"", "1", "Files/a.txt", {}),
            ("Files/sd", b"", "0", "", {"MSWINDOWS.sd": "O:BAG:SYD:(A;;FA;;;SY)", **_TIMES}),
            ("Files/ln", b"", "2", "a.txt", {"MSWINDOWS.fileattr": "1056", **_TIMES}),
            ("Files/j", b"", "2", "C:\\x", {"MSWINDOWS.mountpoint": "1", **_TIMES}),
        ],
        tarfile.PAX_FORMAT,
    )


def seeds() -> dict[str, bytes]:
    base = _base()
    delta = _tar(
        [
            ("pax_global_header", b"", "g", "", {"comment": "x"}),
            ("Files/.wh.a.txt", b"", "0", "", {}),
            ("Files/" + "n" * 120 + ".dll", b"MZ", "0", "", {"MSWINDOWS.fileattr": "32"}),
        ],
        tarfile.PAX_FORMAT,
    )
    gnu = _tar([("Files/" + "g" * 110, b"x", "0", "", {})], tarfile.GNU_FORMAT)
    return {
        "seed-base.tar": base,
        "seed-delta.tar": delta,
        "seed-gnu.tar": gnu,
        "seed-base.tar.gz": gzip.compress(base, mtime=0),
        "seed-base.tar.zst": zstandard.ZstdCompressor(write_checksum=True).compress(base),
        "seed-truncated.tar": base[: len(base) // 2 + 100],  # inside an entry
    }


def main() -> None:
    directory = CORPUS / "tar_reader"
    directory.mkdir(exist_ok=True)
    for name, data in seeds().items():
        (directory / name).write_bytes(data)


if __name__ == "__main__":
    main()
