r"""``cimsnap hive``: inspect, query, merge and check registry hive files.

* ``hive dump HIVE [KEY]``: the tree below KEY (default: the root), one key per block;
  ``--json`` prints one object with the base-block fields and a flat list of keys (path,
  layer semantics, InheritClass, class, values with tombstone marks).
* ``hive get HIVE KEY VALUE``: one value, decoded by type (``""`` names the default value).
* ``hive merge BASE DELTA OUT``: ORMergeHives into a new file.
* ``hive check HIVE``: full structural validation; problems are listed one per line.

Exit codes: 0 success; 1 the operation failed (missing file, key or value, malformed hive,
check errors, output exists); 2 bad usage (argparse). ``check`` lists warnings (legal but
untidy structure) too, but exits 0 when it found only warnings. Errors go to stderr and say what
to do next.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from cimsnap.errdefs import CimsnapError, NotFound
from cimsnap.hive.check import check_hive
from cimsnap.hive.errors import HiveFormatError, HiveModelError
from cimsnap.hive.merge import merge_files
from cimsnap.hive.query import lookup_value, mapped_hive
from cimsnap.hive.reader import read_hive
from cimsnap.hive.tree import Hive, Key, LayerSemantics, Value
from cimsnap.hive.view import TypedData, decode_value

__all__ = ["register"]

TYPE_NAMES = {
    0: "REG_NONE",
    1: "REG_SZ",
    2: "REG_EXPAND_SZ",
    3: "REG_BINARY",
    4: "REG_DWORD",
    5: "REG_DWORD_BIG_ENDIAN",
    6: "REG_LINK",
    7: "REG_MULTI_SZ",
    8: "REG_RESOURCE_LIST",
    9: "REG_FULL_RESOURCE_DESCRIPTOR",
    10: "REG_RESOURCE_REQUIREMENTS_LIST",
    11: "REG_QWORD",
}

SEMANTICS_NAMES = {
    LayerSemantics.MERGE: "merge",
    LayerSemantics.TOMBSTONE: "tombstone",
    LayerSemantics.SUPERSEDE_LOCAL: "supersede-local",
    LayerSemantics.SUPERSEDE_TREE: "supersede-tree",
}


def register(subparsers: Any) -> None:
    """Add the ``hive`` command group to the top-level parser's subparsers."""
    hive = subparsers.add_parser("hive", help="inspect, query, merge and check registry hives")
    sub = hive.add_subparsers(dest="hive_command", metavar="SUBCOMMAND", required=True)

    dump = sub.add_parser("dump", help="print the key tree of a hive (or of one key)")
    dump.add_argument("hive", metavar="HIVE", help="regf file")
    dump.add_argument("key", metavar="KEY", nargs="?", default="", help=r"key path, e.g. A\B")
    dump.add_argument("--json", action="store_true", help="machine-readable output")
    dump.set_defaults(func=_guarded(_dump))

    get = sub.add_parser("get", help="print one value, decoded by its type")
    get.add_argument("hive", metavar="HIVE", help="regf file")
    get.add_argument("key", metavar="KEY", help=r"key path below the root, e.g. A\B")
    get.add_argument("value", metavar="VALUE", help='value name ("" for the default value)')
    get.add_argument("--json", action="store_true", help="machine-readable output")
    get.set_defaults(func=_guarded(_get))

    merge = sub.add_parser("merge", help="merge a differencing hive into a base (ORMergeHives)")
    merge.add_argument("base", metavar="BASE", help="normal hive (the parent's *_BASE)")
    merge.add_argument("delta", metavar="DELTA", help="differencing hive (a layer's *_Delta)")
    merge.add_argument("out", metavar="OUT", help="new file for the merged hive (must not exist)")
    merge.set_defaults(func=_guarded(_merge))

    check = sub.add_parser("check", help="validate the structure of a hive")
    check.add_argument("hive", metavar="HIVE", help="regf file")
    check.set_defaults(func=_guarded(_check))


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``func``; report the errors a user can act on and return exit code 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except HiveFormatError as e:
            notes = "".join(f" ({n})" for n in getattr(e, "__notes__", ()))
            _fail(f"malformed hive: {e}{notes}; run 'cimsnap hive check' on it for details")
        except HiveModelError as e:
            _fail(f"cannot write the result: {e}")
        except NotFound as e:
            _fail(f"{e}; check the names ('cimsnap hive dump HIVE' lists a hive's keys)")
        except CimsnapError as e:
            _fail(str(e))
        except BrokenPipeError:
            raise  # the dispatcher turns a closed stdout into exit code 141
        except OSError as e:
            _fail(f"{e.filename or ''}: {e.strerror or e}; check the path and permissions")
        return 1

    return run


def _fail(message: str) -> None:
    print(f"cimsnap hive: {message}", file=sys.stderr)


def _dump(args: argparse.Namespace) -> int:
    with open(args.hive, "rb") as f:
        hive = read_hive(f.read())
    start = hive.root.find(args.key)
    if start is None:
        _fail(f"{args.hive}: no key {args.key!r}; run 'cimsnap hive dump {args.hive}' to list keys")
        return 1
    if args.json:
        json.dump(_dump_json(hive, start, args.key), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _dump_text(hive, start, args.key, sys.stdout)
    return 0


def _walk(start: Key, start_path: str) -> Iterator[tuple[str, int, Key]]:
    """Yield (path, depth, key) depth first in folded-name order, without recursion."""
    stack = [(start_path.strip("\\"), 0, start)]
    while stack:
        path, depth, key = stack.pop()
        yield path, depth, key
        for slot in sorted(key.subkeys, reverse=True):
            child = key.subkeys[slot]
            stack.append((f"{path}\\{child.name}" if path else child.name, depth + 1, child))


def _marks(key: Key) -> list[str]:
    marks = []
    if key.semantics != LayerSemantics.MERGE:
        marks.append(SEMANTICS_NAMES[key.semantics])
    if key.inherit_class:
        marks.append("inherit-class")
    return marks


def _dump_text(hive: Hive, start: Key, start_path: str, out: TextIO) -> None:
    kind = "differencing" if hive.is_differencing else "normal"
    out.write(f"# {kind} hive v1.{hive.minor_version}, flags {hive.flags:#x}\n")
    for path, depth, key in _walk(start, start_path):
        indent = "  " * depth
        extra = _marks(key)
        if key.class_name is not None:
            extra.append(f"class={key.class_name!r}")
        suffix = f"  [{', '.join(extra)}]" if extra else ""
        shown = key.name if depth else "\\" + (path or key.name)
        out.write(f"{indent}{shown}{suffix}\n")
        for value in key.values:
            out.write(f"{indent}  = {_value_text(value)}\n")


def _value_text(value: Value) -> str:
    name = f'"{value.name}"' if value.name else "(default)"
    if value.tombstone:
        return f"{name} <tombstone>"
    return f"{name} {_type_name(value.type)} {_data_text(decode_value(value.type, value.data))}"


def _type_name(vtype: int) -> str:
    return TYPE_NAMES.get(vtype, f"type {vtype:#x}")


def _data_text(data: TypedData) -> str:
    if isinstance(data, str):
        return json.dumps(data, ensure_ascii=False)
    if isinstance(data, list):
        return "[" + ", ".join(json.dumps(s, ensure_ascii=False) for s in data) + "]"
    if isinstance(data, int):
        return f"{data} ({data:#x})"
    return data.hex(" ") if data else "(empty)"


def _json_data(data: TypedData) -> object:
    return {"hex": data.hex()} if isinstance(data, bytes) else data


def _value_json(value: Value) -> dict[str, object]:
    out: dict[str, object] = {"name": value.name, "tombstone": value.tombstone}
    if not value.tombstone:
        out["type"] = value.type
        out["type_name"] = _type_name(value.type)
        out["data"] = _json_data(decode_value(value.type, value.data))
        out["raw"] = value.data.hex()
    return out


def _dump_json(hive: Hive, start: Key, start_path: str) -> dict[str, object]:
    keys = [
        {
            "path": path,
            "name": key.name,
            "last_written": key.last_written,
            "flags": key.flags,
            "class": key.class_name,
            "semantics": SEMANTICS_NAMES[key.semantics],
            "inherit_class": key.inherit_class,
            "values": [_value_json(v) for v in key.values],
        }
        for path, _depth, key in _walk(start, start_path)
    ]
    return {
        "minor_version": hive.minor_version,
        "flags": hive.flags,
        "differencing": hive.is_differencing,
        "file_name": hive.file_name,
        "last_written": hive.last_written,
        "keys": keys,
    }


def _get(args: argparse.Namespace) -> int:
    value = lookup_value(args.hive, args.key, args.value)
    if args.json:
        record = {
            "key": args.key,
            "name": value.name,
            "type": value.type,
            "type_name": _type_name(value.type),
            "tombstone": value.tombstone,
            "data": _json_data(value.data),
            "raw": value.raw.hex(),
        }
        json.dump(record, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if value.tombstone:
        _fail(f"{args.value!r} is a tombstone: this delta deletes the lower layer's value")
        return 0
    data = value.data
    if isinstance(data, list):
        sys.stdout.writelines(f"{s}\n" for s in data)
    elif isinstance(data, bytes):
        sys.stdout.write(data.hex() + "\n")
    else:
        sys.stdout.write(f"{data}\n")
    return 0


def _merge(args: argparse.Namespace) -> int:
    merge_files(args.base, args.delta, args.out)
    return 0


def _check(args: argparse.Namespace) -> int:
    with mapped_hive(args.hive) as data:
        problems = check_hive(data)
    for problem in problems:
        print(f"{args.hive}: {problem}")
    errors = sum(1 for p in problems if p.severity == "error")
    if errors:
        _fail(f"{args.hive}: {errors} error(s); the hive is not safe to use")
        return 1
    return 0
