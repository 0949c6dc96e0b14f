"""The API's client fixtures (the real app over httpx's ASGI transport), for /metrics tests."""

from tests.api.conftest import client, make_client  # noqa: F401
