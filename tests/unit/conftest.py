"""The unit tests' hypothesis profiles (tests/hypothesis_profiles.py)."""

import tests.hypothesis_profiles  # noqa: F401 - registers and loads the profile
