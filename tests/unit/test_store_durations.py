"""The fleet store's durations from the environment (requester/store/pgstore.py): a number of
seconds or a typed error, never an endless retry (`nan`, `inf`) or a silent default (a typo)."""

from __future__ import annotations

import pytest

from firsttrust.requester.store import pgstore
from firsttrust.requester.store.errors import StoreConfigError


@pytest.mark.parametrize("variable, read", [("FIRSTTRUST_STORE_DEADLINE", pgstore._deadline),
                                            ("FIRSTTRUST_FLEET_LEASE", pgstore.lease_seconds)])
def test_a_duration_is_a_finite_number_of_seconds_or_refused(monkeypatch, variable, read):
    monkeypatch.delenv(variable, raising=False)
    assert read() in (pgstore.DEFAULT_DEADLINE, pgstore.DEFAULT_LEASE)
    for text, seconds in (("2.5", 2.5), ("0", 0.0)):
        monkeypatch.setenv(variable, text)
        assert read() == seconds
    for text in ("nan", "inf", "-1", "30s", "1e999"):
        monkeypatch.setenv(variable, text)
        with pytest.raises(StoreConfigError, match=variable):
            read()
