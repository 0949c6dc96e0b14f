"""The records of one JSON document, read one at a time: memory holds a window of the
text and the record at hand, whatever the size of the document.

The bytes are decoded a window at a time; the objects on the way to `records_path` are
walked key by key, and each element of the record list is decoded on its own by the
standard library's scanner (`json.JSONDecoder.raw_decode`), so a record reads exactly as
`json.loads` would read it: integers of any size stay ints, floats are floats.

An element that is not an object, or that json cannot turn into a Python value (nested
deeper than the interpreter's recursion limit, an integer beyond its digit limit), is
yielded as a Rejected carrying its raw text, and the elements after it still load. A
syntax error fails the whole document (the next element's start is unknown then), as it
did when documents were parsed whole.

Everything outside the record list is kept (`rest`: the document with the list emptied),
for the paginators that read a next cursor from the body.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from app.core.exact_json import exact_constant, exact_float
from workers.sources.base import PermanentError

READ_BYTES = 1024 * 1024  # the least read at a time; a longer value reads as much again as it holds
RAW_TEXT_LIMIT = 64 * 1024  # the raw text kept for one rejected element

# Numbers no double holds (1e400, NaN, Infinity) decode as exact_json's NonFinite, so that
# encoding a raw chunk never writes them as null (orjson would) and the normaliser rejects them.
_DECODER = json.JSONDecoder(parse_float=exact_float, parse_constant=exact_constant)
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
# A whole string, a bracket, a run of anything else, or a lone quote: a string the window cut.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|[^"\[\]{}]+|"', re.DOTALL)
_CUT_SHORT_CHARS = 16  # a value cut by the window's end fails this close to it, or as an unterminated string


@dataclass(frozen=True, slots=True)
class Rejected:
    """An element of the record list that is no record: why, and its raw JSON text."""

    reason: str
    raw_text: str


def streamable(records_path: str, pagination: str, next_cursor_path: str) -> bool:
    """Whether a source's records can be read one at a time.

    Not when records_path indexes into a list ("results.0.items": elements are walked,
    not counted), nor when the next cursor is read from inside the records themselves
    (`rest` has them emptied); such documents are parsed whole.
    """
    parts = records_path.split(".") if records_path else []
    if any(part.lstrip("-").isdigit() for part in parts):
        return False
    if pagination == "cursor":
        inside = next_cursor_path == records_path or next_cursor_path.startswith(records_path + ".")
        if not records_path or inside:
            return False
    return True


class _Window:
    """The document's text from the value being read on, refilled from the byte chunks."""

    def __init__(self, chunks: Iterable[bytes], where: str):
        self._chunks = iter(chunks)
        self._where = where
        self._decoder: codecs.IncrementalDecoder | None = None
        self._head = b""  # the first bytes, until there are enough to tell the encoding
        self.text = ""
        self.pos = 0
        self.value_start = 0  # where the value value() returned last starts
        self.eof = False
        self._dropped = 0  # characters before text[0], for error positions
        self._dropped_lines = 0
        self._line_start = 0  # where the line holding text[0] starts, counted like _dropped

    # -- the window ----------------------------------------------------------------------

    def more(self) -> None:
        """Drop the text before `pos` and read at least as much again as is left unread."""
        wanted = max(READ_BYTES, len(self.text) - self.pos)
        parts: list[bytes] = []
        size = 0
        while size < wanted:
            chunk = next(self._chunks, None)
            if chunk is None:
                self.eof = True
                break
            parts.append(chunk)
            size += len(chunk)
        fresh = self._decode(b"".join(parts))
        dropped = self.text[: self.pos]
        newline = dropped.rfind("\n")
        if newline >= 0:
            self._dropped_lines += dropped.count("\n")
            self._line_start = self._dropped + newline + 1
        self._dropped += self.pos
        self.text = self.text[self.pos :] + fresh
        self.pos = 0

    def _decode(self, data: bytes) -> str:
        try:
            if self._decoder is None:
                # json.loads(bytes) picks UTF-8, -16 or -32 from the first four bytes; so do we.
                self._head += data
                if len(self._head) < 4 and not self.eof:
                    return ""
                data, self._head = self._head, b""
                self._decoder = codecs.getincrementaldecoder(json.detect_encoding(data))("surrogatepass")
            return self._decoder.decode(data, final=self.eof)
        except UnicodeDecodeError as exc:
            raise PermanentError(f"{self._where}: malformed JSON: not UTF-8/16/32 text ({exc.reason})") from None

    def malformed(self, message: str, at: int | None = None) -> PermanentError:
        at = self.pos if at is None else at
        lines = self.text.count("\n", 0, at)
        if lines:
            column = at - self.text.rfind("\n", 0, at)
        else:
            column = self._dropped + at - self._line_start + 1
        line = self._dropped_lines + lines + 1
        return PermanentError(f"{self._where}: malformed JSON: {message} at line {line} column {column}")

    # -- tokens ----------------------------------------------------------------------------

    def peek(self) -> str:
        """The next character that is not white space ('' at the end), the cursor on it."""
        while True:
            match = _WHITESPACE.match(self.text, self.pos)
            assert match is not None  # the pattern matches the empty string
            self.pos = match.end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if self.eof:
                return ""
            self.more()

    def take(self, expected: str, what: str) -> str:
        """Consume one of the `expected` characters, or fail naming `what` was expected."""
        char = self.peek()
        if not char or char not in expected:
            raise self.malformed(f"Expecting {what}")
        self.pos += 1
        return char

    def value(self) -> Any:
        """Decode the value at the cursor as json does; the cursor moves past it."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                if self._cut_short(exc):
                    self.more()
                    continue
                raise self.malformed(exc.msg, exc.pos) from None
            if end > len(self.text) - _CUT_SHORT_CHARS and not self.eof:  # a number may go on ("1.5" of "1.5e3")
                self.more()
                continue
            self.value_start, self.pos = self.pos, end
            return value

    def _cut_short(self, exc: json.JSONDecodeError) -> bool:
        if self.eof:
            return False
        return exc.pos >= len(self.text) - _CUT_SHORT_CHARS or exc.msg.startswith("Unterminated string")

    def element(self) -> Any:
        """The next element of the record list: a record, or a Rejected with its raw text."""
        try:
            value = self.value()
        except RecursionError:
            return Rejected("nested too deeply", self._skip())
        except ValueError:  # not a JSONDecodeError (those are malformed): an int past the digit limit
            return Rejected("number too large", self._skip())
        if isinstance(value, dict):
            return value
        return Rejected("not an object", _capped(self.text[self.value_start : self.pos]))

    def _skip(self) -> str:
        """Move past the value at the cursor without decoding it; its raw text, capped."""
        start = self.pos
        if self.text[start] not in "[{":
            while True:
                number = _NUMBER.match(self.text, self.pos)
                if number is None:
                    raise self.malformed("Expecting value")
                if number.end() < len(self.text) or self.eof:
                    self.pos = number.end()
                    return _capped(number.group())
                self.more()
        depth, scan = 0, self.pos
        while True:
            for token in _TOKEN.finditer(self.text, scan):
                text = token.group()
                if text == '"':
                    break  # a string the window cut: read on
                if text in ("[", "{"):
                    depth += 1
                elif text in ("]", "}"):
                    depth -= 1
                    if depth == 0:
                        raw = self.text[self.pos : token.end()]
                        self.pos = token.end()
                        return _capped(raw)
                scan = token.end()
            if self.eof:
                raise self.malformed("Unterminated value")
            offset = scan - self.pos
            self.more()
            scan = self.pos + offset


def _capped(text: str) -> str:
    return text if len(text) <= RAW_TEXT_LIMIT else text[:RAW_TEXT_LIMIT] + "...[truncated]"


class JsonRecords:
    """Iterate the elements of the record list at `records_path` (records are dicts, the rest
    Rejected); after the iteration, `rest` is the document with that list emptied.

    A single object at `records_path` is one record; anything else there, or nothing, fails
    as it always did (records_in in http_json).
    """

    def __init__(self, chunks: Iterable[bytes], records_path: str, where: str):
        self._window = _Window(chunks, where)
        self._path = records_path
        self._parts = records_path.split(".") if records_path else []
        self._where = where
        self.rest: Any = None

    def __iter__(self) -> Iterator[Any]:
        window = self._window
        if self._parts and window.peek() == "{":
            self.rest, found = yield from self._object(self._parts)
            if not found:
                raise _not_found(self._path, self._where)
        elif self._parts:
            window.value()  # not an object, so the path leads nowhere (or the document is malformed)
            raise _not_found(self._path, self._where)
        else:
            self.rest = yield from self._records()
        if window.peek():
            raise window.malformed("Extra data")

    def _object(self, parts: list[str]) -> Generator[Any, None, tuple[dict[str, Any], bool]]:
        """Walk an object member by member; the member named parts[0] leads on to the records."""
        window = self._window
        window.take("{", "'{'")
        kept: dict[str, Any] = {}
        found = on_path = False
        if window.peek() == "}":
            window.pos += 1
            return kept, found
        while True:
            if window.peek() != '"':
                raise window.malformed("Expecting property name enclosed in double quotes")
            key = window.value()
            window.take(":", "':' delimiter")
            if key != parts[0]:
                kept[key] = window.value()
            elif on_path:
                raise PermanentError(
                    f"{self._where}: key {key!r} on records_path {self._path!r} appears twice in one object"
                )
            else:
                on_path = True
                if len(parts) == 1:
                    kept[key] = yield from self._records()
                    found = True
                elif window.peek() == "{":
                    kept[key], found = yield from self._object(parts[1:])
                else:
                    kept[key] = window.value()
            if window.take(",}", "',' delimiter") == "}":
                return kept, found

    def _records(self) -> Generator[Any, None, Any]:
        """Yield the records at the cursor; return what stands for them in `rest`."""
        window = self._window
        if window.peek() != "[":
            value = window.value()
            if isinstance(value, dict):
                yield value
                return value
            if value is None and self._path:
                raise _not_found(self._path, self._where)
            raise PermanentError(
                f"{self._where}: records_path {self._path!r} holds a {type(value).__name__}, not a list of records"
            )
        window.take("[", "'['")
        if window.peek() == "]":
            window.pos += 1
            return []
        scan = _DECODER.scan_once  # type: ignore[attr-defined]  # raw_decode without its Python frame
        while True:
            # The common case in one step: an object and the ',' or ']' after it, inside the window.
            text = window.text
            try:
                value, end = scan(text, window.pos)
            except (StopIteration, ValueError, RecursionError):
                value = None
            if type(value) is dict:
                after = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]  # it matches ""
                if after < len(text) and text[after] in ",]":
                    window.pos = after + 1
                    if text[after] == "]":
                        yield value
                        return []
                    window.peek()
                    yield value
                    continue
            # Anything else (an element cut by the window, no object, an error) the careful way.
            yield window.element()
            if window.take(",]", "',' delimiter") == "]":
                return []
            window.peek()


def _not_found(path: str, where: str) -> PermanentError:
    return PermanentError(f"{where}: records_path {path!r} not found in the response")
