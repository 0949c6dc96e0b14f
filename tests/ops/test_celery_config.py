"""The Celery settings the reliability design depends on (docs/architecture.md).

Redis redelivers an unacknowledged message after the visibility timeout, so it must
exceed the task time limit, or a task still running legitimately is delivered twice.
"""

from __future__ import annotations

import pytest

import celeryconfig
from app.settings import Settings


def test_at_least_once_delivery_settings() -> None:
    assert celeryconfig.task_acks_late is True
    assert celeryconfig.task_reject_on_worker_lost is True
    assert celeryconfig.worker_prefetch_multiplier == 1
    assert celeryconfig.accept_content == ["json"]
    assert celeryconfig.task_serializer == celeryconfig.result_serializer == "json"


def test_visibility_timeout_exceeds_the_task_time_limit() -> None:
    visibility = celeryconfig.broker_transport_options["visibility_timeout"]
    assert visibility > celeryconfig.task_time_limit > celeryconfig.task_soft_time_limit
    assert celeryconfig.result_backend_transport_options["visibility_timeout"] == visibility


@pytest.mark.parametrize("timeout_s", [10, 300, 3600, 86_400])
def test_visibility_timeout_formula(timeout_s: int) -> None:
    settings = Settings(task_timeout_s=timeout_s)
    assert settings.visibility_timeout_s == 2 * timeout_s + 60 > timeout_s


def test_every_routed_task_goes_to_a_declared_queue() -> None:
    declared = {queue.name for queue in celeryconfig.task_queues}
    assert declared == set(celeryconfig.QUEUES) == {"fetch", "normalize", "maintenance"}
    assert {route["queue"] for route in celeryconfig.task_routes.values()} <= declared
    assert celeryconfig.task_routes["workers.tasks.fetch_source"]["queue"] == "fetch"
    assert celeryconfig.task_routes["workers.tasks.normalize_and_upsert"]["queue"] == "normalize"
