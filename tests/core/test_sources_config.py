"""sources.toml: valid files load, bad ones fail with one message naming file, source, key."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.sources_config import SourceConfigError, load_sources

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.toml"
    path.write_text(text)
    return path


def test_default_sources_file_is_valid() -> None:
    sources = load_sources(ROOT / "sources.toml")
    assert {s.kind for s in sources.values()} == {"http_json", "csv", "rss"}
    for source in sources.values():
        assert Path(source.url).exists(), f"{source.name} reads bundled sample data"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[sources.a]\nkind = "ftp"\nurl = "x"\nid_field = "id"', ["source 'a'", "key 'kind'"]),
        ('[sources.a]\nkind = "http_json"\nid_field = "id"', ["source 'a'", "'url' is required"]),
        ('[sources.a]\nkind = "csv"\nurl = "x.csv"\nid_field = "id"\nschedule = "every day"', ["key 'schedule'"]),
        ('[sources.a]\nkind = "csv"\nurl = "x.csv"\nid_field = "id"\nschedule = "61 * * * *"', ["key 'schedule'"]),
        ('[sources.a]\nkind = "csv"\nurl = "x.csv"\nid_field = "id"\nurll = "typo"', ["source 'a'", "key 'urll'"]),
        ('[sources.a]\nkind = "csv"\nurl = "x.csv"\nid_field = "id"\n[sources.a.types]\nAge = "decimal"',
         ["key 'types.Age'"]),
        ('[sources.w]\nkind = "webhook"\nid_field = "id"', ["source 'w'", "secret_env"]),
        ('[sources.a]\nkind = "csv"\nurl = "x.csv"\nid_field = "id"\nchunk_size = 0', ["key 'chunk_size'"]),
        ('[sources.a]\nkind = "csv"\nurl = "x.csv"\nid_field = "id"\nincremental_field = "done"\n'
         '[sources.a.types]\ndone = "bool"', ["source 'a'", "'incremental_field' cannot be a bool field"]),
        ("[sources.a\nkind=", ["not valid TOML"]),
        ('[sources.a]\nkind = "http_json"\nurl = "http://a/"\nid_field = "id"\nredirect_hosts = ["https://cdn.example.com"]',
         ["source 'a'", "key 'redirect_hosts'", "'https://cdn.example.com' is not a host name"]),
        ('[sources.a]\nkind = "csv"\nurl = "http://a/"\nid_field = "id"\nredirect_hosts = ["cdn.example.com:8443"]',
         ["key 'redirect_hosts'", "no scheme, port, path or wildcard"]),
        ('[sources.a]\nkind = "rss"\nurl = "http://a/"\nredirect_hosts = "cdn.example.com"', ["key 'redirect_hosts'"]),
    ],
)
def test_bad_configuration_names_file_source_and_key(tmp_path: Path, body: str, expected: list[str]) -> None:
    path = write(tmp_path, body)
    with pytest.raises(SourceConfigError) as caught:
        load_sources(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_local_paths_resolve_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[sources.a]\nkind = "csv"\nurl = "data/x.csv"\nid_field = "id"')
    assert load_sources(path)["a"].url == str(tmp_path / "data" / "x.csv")


def test_header_secrets_are_expanded_only_on_use(tmp_path: Path) -> None:
    path = write(tmp_path, '[sources.a]\nkind = "http_json"\nurl = "http://x"\nid_field = "id"\n'
                           'headers = { Authorization = "Bearer ${TOKEN_X}" }')
    source = load_sources(path)["a"]
    assert source.snapshot()["headers"]["Authorization"] == "Bearer ${TOKEN_X}"
    assert source.resolved_headers({"TOKEN_X": "abc"}) == {"Authorization": "Bearer abc"}
