"""Run one fuzz target under atheris (libFuzzer): ``python -m tests.fuzz.atheris_run NAME ARGS``.

``NAME`` is a module of ``tests.fuzz.targets``; ``ARGS`` go to libFuzzer unchanged (corpus
directories, ``-max_total_time=S``, ``-runs=N``, ``-artifact_prefix=DIR/``). New inputs
are written to the first corpus directory: pass a scratch directory first and the
committed seeds (``tests/fuzz/corpus/NAME``) second. cimsnap's modules are imported under
atheris' instrumentation, so coverage guides the mutations. A crash (any exception the
target lets escape) exits non-zero and leaves ``crash-<sha1>`` in the artifact prefix:
commit it under ``tests/fuzz/corpus/NAME/`` (the replay test then keeps it fixed).
"""

from __future__ import annotations

import importlib
import logging
import sys

import atheris


def main(argv: list[str]) -> None:
    name, libfuzzer_args = argv[1], argv[2:]
    logging.disable(logging.CRITICAL)  # targets log refused input; that is expected noise
    with atheris.instrument_imports(include=["cimsnap"]):
        target = importlib.import_module(f"tests.fuzz.targets.{name}")
    atheris.Setup([argv[0], *libfuzzer_args], target.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
