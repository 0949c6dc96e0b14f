"""A deterministic paginated JSON API for the benchmark: `GET /posts?page=N&per_page=S`.

    python scripts/bench/json_api.py --port 8766 --records 100000

Records look like JSONPlaceholder posts plus a timestamp. Every 1000th record carries
the rare word "aurora" in its title, so the benchmark has a selective full-text query.
Pages are rendered once at start-up: the server must never be the bottleneck it measures.
"""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson

WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea"
).split()
RARE_WORD = "aurora"


def post(rng: random.Random, number: int) -> dict[str, object]:
    title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
    if number % 1000 == 0:
        title = f"{title} {RARE_WORD}"
    published = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=number)
    return {
        "userId": 1 + number // 100,
        "id": number,
        "title": title,
        "body": " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 40))),
        "published": published.isoformat(),
    }


def posts(count: int, seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [post(rng, number) for number in range(1, count + 1)]


def serve(port: int, records: int) -> None:
    data = posts(records)
    cache: dict[tuple[int, int], bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            parts = urlsplit(self.path)
            if parts.path != "/posts":
                self._send(404, b'{"error": "not found"}')
                return
            query = parse_qs(parts.query)
            try:
                page = int(query.get("page", ["1"])[0])
                size = int(query.get("per_page", ["100"])[0])
            except ValueError:
                self._send(400, b'{"error": "bad page"}')
                return
            key = (page, size)
            if key not in cache:
                start = (page - 1) * size
                cache[key] = orjson.dumps(data[start : start + size])
            self._send(200, cache[key])

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence per-request logs
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"serving {records} records on http://127.0.0.1:{port}/posts", flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    serve(args.port, args.records)


if __name__ == "__main__":
    main()
