"""registry: each kind reaches its connector; push sources are not fetched."""

from __future__ import annotations

import pytest

from workers.sources import registry
from workers.sources.base import FetchState, PermanentError


@pytest.mark.parametrize(
    ("kind", "case", "expected_first"),
    [
        ("http_json", "posts.json", {"id": 1, "title": "Post 1"}),
        ("csv", "latin1.csv", {"id": "1", "city": "Zürich"}),
        ("rss", "feed_rss2.xml", {"id": "urn:story:1", "title": "First story"}),
    ],
)
def test_dispatch_by_kind(make_source, cases, kind, case, expected_first) -> None:
    extraction = registry.extract(make_source(kind, url=str(cases / case)), FetchState())
    first = next(extraction.items).record
    assert first is not None
    assert {key: first[key] for key in expected_first} == expected_first


def test_webhook_is_a_push_source(make_source) -> None:
    source = make_source("webhook", secret_env="ORDERS_WEBHOOK_SECRET")
    with pytest.raises(PermanentError, match="push source"):
        registry.extract(source, FetchState())


def test_every_pulled_kind_has_a_connector() -> None:
    from typing import get_args

    from app.core.sources_config import Kind

    assert set(registry.CONNECTORS) == set(get_args(Kind)) - {"webhook"}
