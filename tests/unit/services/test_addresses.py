"""Which listening addresses only this machine reaches (services.addresses)."""

from __future__ import annotations

import pytest

from services.addresses import is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.6.7", "::1", "localhost"])
def test_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "192.0.2.7", "example.com", "localhost."])
def test_not_loopback(host: str) -> None:
    assert not is_loopback(host)
