r"""``cimsnap cim``: inspect, check and build CimFS images on any OS.

* ``cim ls IMAGE [PATH]``: entries of a directory (type, size, attributes, name).
* ``cim stat IMAGE PATH``: everything the record holds, plus its alternate streams.
* ``cim cat IMAGE PATH[:STREAM]``: the bytes of a file's default or alternate stream.
* ``cim tree IMAGE [PATH]``: every path below PATH.
* ``cim verify IMAGE``: check every invariant of the format; lists errors
  and warnings (conventions a Windows-written image may legitimately break).
* ``cim build SRC_DIR OUT.cim [--parent PARENT.cim]``: build an image from a directory.

``ls``, ``stat``, ``tree`` and ``verify`` take ``--json``. Paths inside the image use ``\``
or ``/``. Exit codes: 0 success; 1 invalid image, missing path, verify errors or build
problems; 2 bad usage. Errors go to stderr and say what to do next.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cimsnap.cim.errors import (
    CimApiError,
    CimError,
    CimFileExistsError,
    CimFormatError,
    CimNotFoundError,
)
from cimsnap.cim.format import FileAttribute, StreamType
from cimsnap.cim.reader import FileInfo, split_path
from cimsnap.cim.regions import CimImage, open_image
from cimsnap.cim.verify import Severity, verify_image
from cimsnap.commands import failed

__all__ = ["register"]

_FILETIME_EPOCH = datetime.datetime(1601, 1, 1, tzinfo=datetime.UTC)
_CHUNK = 1 << 20


def register(subparsers: Any) -> None:
    """Add the ``cim`` command group to the top-level parser's subparsers."""
    cim = subparsers.add_parser("cim", help="inspect, verify and build CimFS images")
    sub = cim.add_subparsers(dest="cim_command", metavar="SUBCOMMAND", required=True)

    def image_command(name: str, help_text: str, path: str | None, json_flag: bool) -> Any:
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("image", metavar="IMAGE", type=Path, help="the .cim file")
        if path == "optional":
            parser.add_argument("path", metavar="PATH", nargs="?", default="", help="default: root")
        elif path == "required":
            parser.add_argument("path", metavar="PATH", help=r"path inside the image, e.g. a\b")
        if json_flag:
            parser.add_argument("--json", action="store_true", help="machine-readable output")
        return parser

    image_command("ls", "list a directory", "optional", True).set_defaults(func=_ls)
    image_command("stat", "show a file's record and streams", "required", True).set_defaults(
        func=_stat
    )
    cat = image_command("cat", "write a stream's bytes to stdout", None, False)
    cat.add_argument("path", metavar="PATH[:STREAM]", help="file, optionally :alternate-stream")
    cat.set_defaults(func=_cat)
    image_command("tree", "list every path below PATH", "optional", True).set_defaults(func=_tree)
    image_command("verify", "check every invariant of the format", None, True).set_defaults(
        func=_verify
    )

    build = sub.add_parser("build", help="build an image from a directory tree")
    build.add_argument("src", metavar="SRC_DIR", type=Path, help="directory to store")
    build.add_argument("out", metavar="OUT.cim", type=Path, help="new image (must not exist)")
    build.add_argument(
        "--parent", metavar="PARENT.cim", type=Path, help="fork this image (same directory)"
    )
    build.set_defaults(func=_build)


def _guard(args: argparse.Namespace, body: Callable[[CimImage], int]) -> int:
    """Run ``body`` on the opened image, turning errors into messages and exit code 1."""
    try:
        with open_image(args.image) as image:
            return body(image)
    except CimFormatError as e:
        return failed(
            f"{args.image}: invalid image: {e}; run `cimsnap cim verify {args.image}` "
            "for a full report"
        )
    except CimNotFoundError as e:
        return failed(f"{args.image}: {e}; list the directory with `cimsnap cim ls`")
    except CimApiError as e:
        return failed(f"{args.image}: {e}")
    except FileNotFoundError as e:
        return failed(f"{e.filename}: no such file; give the path of a .cim file")
    except OSError as e:
        return failed(f"{args.image}: {e.strerror or e}")


def _time(filetime: int) -> str:
    try:
        moment = _FILETIME_EPOCH + datetime.timedelta(microseconds=filetime // 10)
    except OverflowError:
        return str(filetime)
    return moment.isoformat().replace("+00:00", "Z")


def _info_json(info: FileInfo) -> dict[str, object]:
    return {
        "path": info.path,
        "file_id": info.file_id,
        "type": _kind(info),
        "size": info.size,
        "attributes": int(info.attributes),
        "sparse": info.sparse,
        "reparse_tag": info.reparse_tag,
        "creation_time": _time(info.creation_time),
        "last_write_time": _time(info.last_write_time),
        "change_time": _time(info.change_time),
        "last_access_time": _time(info.last_access_time),
    }


def _kind(info: FileInfo) -> str:
    if info.is_directory:
        return "directory"
    return "pe-image" if info.stream_type is StreamType.PE_IMAGE else "file"


_ATTRIBUTE_LETTERS = (
    (FileAttribute.DIRECTORY, "d"),
    (FileAttribute.READONLY, "r"),
    (FileAttribute.HIDDEN, "h"),
    (FileAttribute.SYSTEM, "s"),
    (FileAttribute.ARCHIVE, "a"),
    (FileAttribute.SPARSE_FILE, "S"),
    (FileAttribute.REPARSE_POINT, "l"),
)


def _attribute_letters(attributes: int) -> str:
    return "".join(letter if attributes & bit else "-" for bit, letter in _ATTRIBUTE_LETTERS)


def _ls(args: argparse.Namespace) -> int:
    def body(image: CimImage) -> int:
        reader = image.reader
        record = reader.lookup(args.path)
        base = "\\".join(split_path(args.path))
        entries: list[FileInfo] = []
        skipped = 0
        if not record.is_directory:
            entries.append(reader.info(record, base))
        for entry in reader.listdir(args.path) if record.is_directory else []:
            # Lenient: a bad entry is reported and skipped, the rest is still listed.
            path = f"{base}\\{entry.name}" if base else entry.name
            try:
                entries.append(reader.info(reader.record(entry.file_id), path))
            except CimFormatError as e:
                print(f"cimsnap: {args.image}: {path}: skipped: {e}", file=sys.stderr)
                skipped += 1
        if args.json:
            print(json.dumps([_info_json(i) for i in entries], indent=2))
        else:
            for info in entries:
                name = info.path.rsplit("\\", 1)[-1]
                suffix = "\\" if info.is_directory else ""
                attrs = _attribute_letters(info.attributes)
                print(f"{attrs} {info.size:>12} {_time(info.last_write_time)[:19]} {name}{suffix}")
        if skipped:
            print(f"cimsnap: run `cimsnap cim verify {args.image}` for details", file=sys.stderr)
        return 1 if skipped else 0

    return _guard(args, body)


def _stat(args: argparse.Namespace) -> int:
    def body(image: CimImage) -> int:
        info = image.reader.stat(args.path)
        streams = [
            {"name": s.name, "size": s.size, "sparse": s.sparse}
            for s in image.reader.streams(args.path)
        ]
        result = {**_info_json(info), "streams": streams}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for key, value in result.items():
                if key == "streams":
                    for stream in streams:
                        print(f"{'stream':<17} :{stream['name']} ({stream['size']} bytes)")
                elif key in ("attributes", "reparse_tag"):
                    print(f"{key:<17} {value:#x}")
                else:
                    print(f"{key:<17} {value}")
        return 0

    return _guard(args, body)


def _cat(args: argparse.Namespace) -> int:
    path, colon, stream_name = args.path.partition(":")

    def body(image: CimImage) -> int:
        with image.reader.open_stream(path, stream_name if colon else None) as stream:
            out = sys.stdout.buffer
            for chunk in stream.chunks(_CHUNK):
                out.write(chunk)
            out.flush()
        return 0

    return _guard(args, body)


def _tree(args: argparse.Namespace) -> int:
    errors: list[CimFormatError] = []

    def body(image: CimImage) -> int:
        reader = image.reader
        walk = reader.walk(args.path, on_error=errors.append)
        if args.json:
            items = [_info_json(reader.info(record, path)) for path, record in walk]
            print(json.dumps(items, indent=2))
        else:
            for path, record in walk:
                suffix = "\\" if record.is_directory and path else ""
                print(f"{path or '.'}{suffix}")
        for error in errors:
            print(f"cimsnap: {args.image}: skipped: {error}", file=sys.stderr)
        if errors:
            print(f"cimsnap: run `cimsnap cim verify {args.image}` for details", file=sys.stderr)
        return 1 if errors else 0

    return _guard(args, body)


def _verify(args: argparse.Namespace) -> int:
    def body(image: CimImage) -> int:
        problems = verify_image(image)
        errors = sum(p.severity is Severity.ERROR for p in problems)
        if args.json:
            items = [
                {
                    "severity": p.severity.value,
                    "what": p.what,
                    "region": p.region,
                    "offset": p.offset,
                    "why": p.why,
                }
                for p in problems
            ]
            print(json.dumps({"ok": errors == 0, "problems": items}, indent=2))
        else:
            for problem in problems:
                print(problem)
            warnings = len(problems) - errors
            print(f"{args.image}: {errors} errors, {warnings} warnings")
        return 1 if errors else 0

    return _guard(args, body)


def _build(args: argparse.Namespace) -> int:
    from cimsnap.cim.build import build_from_directory  # lazy: the writer is optional here

    progress: Callable[[int, int], None] | None = None
    if sys.stderr.isatty():

        def progress(files: int, size: int) -> None:
            print(f"\r{files} files, {size / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)

    if not args.src.is_dir():
        return failed(f"{args.src}: not a directory; give the directory tree to store")
    try:
        report = build_from_directory(args.src, args.out, parent=args.parent, progress=progress)
    except CimFileExistsError as e:
        return failed(f"{args.out}: build failed: {e}; remove it or choose another name")
    except CimError as e:
        return failed(f"{args.out}: build failed: {e}")
    except OSError as e:
        return failed(f"{e.filename or args.out}: {e.strerror or e}")
    finally:
        if progress is not None:
            print(file=sys.stderr)
    for path, why in report.problems:
        print(f"cimsnap: {path}: {why}", file=sys.stderr)
    print(f"{args.out}: {report.files} files, {report.bytes} bytes")
    if report.problems:
        return failed(f"{len(report.problems)} paths were not stored as they are (listed above)")
    return 0
