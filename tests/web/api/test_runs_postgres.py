"""The runs list and counts through the API over the Postgres read model (one pass: the stores
agree by their contract suite; this checks the API's filters and cursors reach Postgres as
they reach memory). Without a Postgres on 127.0.0.1:5432 it skips (fails under
CYCLONETIX_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import pytest

from projections.postgres import PostgresReadModel
from tests.contract.test_read_model_postgres import postgres_db, schema, store
from tests.web.api.test_runs import test_list_filters_and_pages_with_a_cursor

__all__ = ["postgres_db", "schema", "store", "test_list_filters_and_pages_with_a_cursor"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def read_model(store: PostgresReadModel) -> PostgresReadModel:
    """Replaces the memory store of tests/web/conftest.py for the tests of this module: a
    fresh schema of the test run's database (the Postgres contract suite's `store`)."""
    return store
