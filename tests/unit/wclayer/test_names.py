"""The safe-name policy: tar names to image paths, and what is refused (names.py table)."""

from __future__ import annotations

import pytest

from cimsnap.wclayer.errors import LayerFormatError
from cimsnap.wclayer.names import ImagePaths


@pytest.mark.parametrize(
    ("tar_name", "image_path"),
    [
        ("Files", "Files"),
        ("Files/Windows/System32/kernel32.dll", "Files\\Windows\\System32\\kernel32.dll"),
        ("./Files//./x", "Files\\x"),
        ("Files/x/", "Files\\x"),
        ("Files/conx", "Files\\conx"),
        ("Files/con.d/x", None),
        ("Files/日本語/ü", "Files\\日本語\\ü"),
    ],
)
def test_converted(tar_name: str, image_path: str | None) -> None:
    paths = ImagePaths()
    if image_path is None:
        with pytest.raises(LayerFormatError):
            paths.convert(tar_name)
    else:
        assert paths.convert(tar_name) == image_path
        assert paths.convert(tar_name) == image_path  # memoised parents give the same


@pytest.mark.parametrize(
    "tar_name",
    [
        "",
        ".",
        "./",
        "..",
        "../x",
        "Files/../../x",
        "Files/a/..",
        "/Files/x",
        "//x",
        "C:/x",
        "Files/C:x",
        "Files\\x",
        "\\\\?\\C:\\x",
        "Files/a:s",
        "Files/a\0b",
        "Files/a\x1fb",
        "Files/a<b",
        "Files/a|b",
        'Files/a"b',
        "Files/a?",
        "Files/x.",
        "Files/x ",
        "Files/NUL",
        "Files/nul.txt",
        "Files/COM1",
        "Files/lpt9.log",
        "Files/AUX/x",
        "Files/" + "n" * 256,
        "Files/\ud800",
    ],
)
def test_refused(tar_name: str) -> None:
    with pytest.raises(LayerFormatError):
        ImagePaths().convert(tar_name)
