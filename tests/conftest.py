"""Suite-wide settings.

Hypothesis profiles: ``ci`` (selected when the ``CI`` environment variable is set) is
derandomized, so a CI run is reproducible and a failure can be replayed locally with
``HYPOTHESIS_PROFILE=ci``; ``dev`` (the default) explores new examples on every run.
``ci`` skips shrinking: a failing property reports its first counterexample at once
instead of spending minutes of the CI budget minimising it (replay it locally, where
``dev`` shrinks).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_PHASES_NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target)

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=_PHASES_NO_SHRINK,
    report_multiple_bugs=False,
)
settings.register_profile(
    "dev",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,
)
_DEFAULT_PROFILE = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _DEFAULT_PROFILE))
