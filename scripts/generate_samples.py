"""Generate the bundled sample data (deterministic, synthetic: nothing copied from upstream).

    python scripts/generate_samples.py                  # data/samples/{posts.json,titanic.csv,feed.xml}
    python scripts/generate_samples.py --titanic-rows 1000000 --out /tmp/big   # benchmark input

The shapes follow the public upstreams the default sources stand in for: JSONPlaceholder
posts (userId, id, title, body), the Titanic passenger CSV's columns, an RSS 2.0 feed.
"""

from __future__ import annotations

import argparse
import csv
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

import orjson

WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
    "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur"
).split()
FIRST = ["John", "Mary", "William", "Anna", "James", "Elizabeth", "Thomas", "Margaret", "Charles", "Helen"]
LAST = ["Smith", "Brown", "Johnson", "Williams", "Taylor", "Andersson", "Kelly", "Murphy", "Sage", "Goodwin"]
TITANIC_COLUMNS = ["PassengerId", "Survived", "Pclass", "Name", "Sex", "Age", "SibSp", "Parch", "Ticket",
                   "Fare", "Cabin", "Embarked"]


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def posts(count: int, seed: int = 1) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [
        {"userId": 1 + i // 10, "id": i + 1, "title": sentence(rng, 3, 8), "body": sentence(rng, 15, 40)}
        for i in range(count)
    ]


def titanic_row(rng: random.Random, passenger_id: int) -> list[object]:
    sex = rng.choice(["male", "female"])
    title = "Mr." if sex == "male" else rng.choice(["Mrs.", "Miss."])
    age = "" if rng.random() < 0.2 else (round(rng.uniform(0.4, 80), 1) if rng.random() < 0.1 else rng.randint(1, 80))
    return [
        passenger_id,
        1 if rng.random() < 0.38 else 0,
        rng.choice([1, 2, 3, 3, 3]),
        f"{rng.choice(LAST)}, {title} {rng.choice(FIRST)}",
        sex,
        age,
        rng.choice([0, 0, 0, 1, 2]),
        rng.choice([0, 0, 0, 1, 2]),
        f"{rng.choice(['A/5', 'PC', 'STON/O2.', ''])} {rng.randint(1000, 399999)}".strip(),
        f"{rng.uniform(5, 250):.4f}",
        "" if rng.random() < 0.77 else f"{rng.choice('ABCDEF')}{rng.randint(1, 120)}",
        rng.choice(["S", "S", "S", "C", "Q"]),
    ]


def write_titanic(path: Path, rows: int, seed: int = 2) -> None:
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(TITANIC_COLUMNS)
        for passenger_id in range(1, rows + 1):
            writer.writerow(titanic_row(rng, passenger_id))


def write_feed(path: Path, items: int, seed: int = 3) -> None:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<rss version="2.0"><channel><title>Sample news</title><link>https://news.example.org/</link>',
        "<description>Synthetic feed bundled for offline runs</description>",
    ]
    for i in range(items):
        published = format_datetime(start + timedelta(hours=7 * i))
        parts.append(
            "<item>"
            f"<title>{escape(sentence(rng, 4, 9).capitalize())}</title>"
            f"<link>https://news.example.org/articles/{i + 1}</link>"
            f"<guid isPermaLink=\"false\">news-{i + 1}</guid>"
            f"<description>{escape(sentence(rng, 20, 50))}</description>"
            f"<author>desk{1 + i % 5}@news.example.org (Desk {1 + i % 5})</author>"
            f"<pubDate>{published}</pubDate>"
            "</item>"
        )
    parts.append("</channel></rss>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "samples")
    parser.add_argument("--posts", type=int, default=100)
    parser.add_argument("--titanic-rows", type=int, default=891)
    parser.add_argument("--feed-items", type=int, default=20)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "posts.json").write_bytes(orjson.dumps(posts(args.posts), option=orjson.OPT_INDENT_2) + b"\n")
    write_titanic(args.out / "titanic.csv", args.titanic_rows)
    write_feed(args.out / "feed.xml", args.feed_items)
    print(f"wrote samples to {args.out}")


if __name__ == "__main__":
    main()
