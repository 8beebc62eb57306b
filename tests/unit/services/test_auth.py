"""Password checks (services/auth.py): pure apart from the argon2 library."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

from services.auth import User, hash_password, verify_password


def test_a_password_verifies_and_a_wrong_one_or_an_unknown_user_does_not() -> None:
    user = User("ada", "admin", hash_password("right horse"), dt.datetime.now(dt.UTC))
    assert verify_password(user, "right horse")
    assert not verify_password(user, "wrong horse")
    assert not verify_password(None, "right horse")  # (checked against a dummy hash)


def test_no_role_hashes_a_password_at_start_up() -> None:
    # Every role imports services.nats (and so this module): an argon2 hash (64 MiB of memory
    # by design) at import cost each process ~0.35 s of CPU and its peak RSS went 40 -> 103 MB.
    # (VmHWM, not ru_maxrss: that one keeps the spawning process's peak across exec.)
    probe = (
        "import services.nats, pathlib; "
        "print(next(l.split()[1] for l in pathlib.Path('/proc/self/status').read_text()"
        ".splitlines() if l.startswith('VmHWM:')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 80 * 1024, f"peak RSS {int(out.stdout) // 1024} MB"
