"""Hypothesis profiles, chosen by HYPOTHESIS_PROFILE (default `dev`); loaded on import (by
tests/unit/conftest.py, and by any test module whose decorators read the profile).

- `dev`: quick enough to run on every change;
- `ci`: about seven times the examples (the core property tests stay under a minute on two
  cores; ten times brought the whole CI run to 19 min 47 s on a slow day, near its 20 min).

Property tests leave `max_examples` to the profile; one that is costly per example asks for a
fraction of it (`settings.default.max_examples // N`), so it scales with the profile too.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "HYPOTHESIS_PROFILE"

settings.register_profile(
    "dev", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,  # a failure prints the blob that reproduces it (@reproduce_failure)
)
settings.load_profile(os.environ.get(PROFILE_ENV, "dev"))
