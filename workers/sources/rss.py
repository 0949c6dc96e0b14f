"""The rss connector: RSS 2.0 (and 1.0/RDF) and Atom feeds, parsed only through defusedxml.

A feed is untrusted XML: entity declarations are refused outright (billion laughs,
external entities), so a hostile feed fails fast with a PermanentError instead of
eating memory or reading local files. Each item keeps every child element, namespace
stripped, and gains the normalised keys the default RSS mapping reads:
id, title, link, description, author, published.
"""

from __future__ import annotations

from collections.abc import Iterator
from copy import deepcopy
from typing import Any
from xml.etree.ElementTree import Element, ParseError, tostring

from defusedxml import DefusedXmlException, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import fromstring

from app.core.sources_config import SourceConfig
from workers.sources.base import Extraction, FetchState, PermanentError, RawItem
from workers.sources.document import open_document
from workers.sources.http import HttpFetcher


def extract(
    source: SourceConfig,
    state: FetchState,
    fetcher: HttpFetcher | None = None,
    resume: dict[str, Any] | None = None,
) -> Extraction:
    """Fetch (conditionally) and parse the feed; items are RawItem per <item> / <entry>."""
    document = open_document(source, state, fetcher)
    if document.not_modified:
        return Extraction(items=iter(()), not_modified=True)
    root = parse_xml(document.body, document.where)
    return Extraction(items=feed_items(root, document.where), new_state=document.new_state)


def parse_xml(body: bytes, where: str) -> Element:
    """Parse untrusted XML, refusing DTD entities and external references."""
    try:
        return fromstring(body, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except EntitiesForbidden:
        raise PermanentError(f"{where}: XML entity declarations are refused (entity expansion attack?)") from None
    except ExternalReferenceForbidden:
        raise PermanentError(f"{where}: XML external references are refused") from None
    except DefusedXmlException as exc:
        raise PermanentError(f"{where}: unsafe XML refused: {type(exc).__name__}") from None
    except ParseError as exc:
        raise PermanentError(f"{where}: malformed XML: {exc}") from None


def local_name(tag: Any) -> str:
    """'{http://www.w3.org/2005/Atom}entry' -> 'entry'."""
    return str(tag).rsplit("}", 1)[-1]


def feed_items(root: Element, where: str) -> Iterator[RawItem]:
    """Items of an RSS 2.0 / RSS 1.0 / Atom document, in document order."""
    kind = local_name(root.tag)
    if kind == "feed":
        feed_author = _atom_author(root)
        entries = [child for child in root if local_name(child.tag) == "entry"]
        return (RawItem(record=atom_record(e, feed_author), line=n) for n, e in enumerate(entries, 1))
    if kind == "rss":
        channel = _first(root, "channel")
        if channel is None:
            raise PermanentError(f"{where}: RSS document without a <channel>")
        entries = [child for child in channel if local_name(child.tag) == "item"]
    elif kind == "RDF":
        entries = [child for child in root if local_name(child.tag) == "item"]
    else:
        raise PermanentError(f"{where}: not an RSS or Atom feed (root element <{kind}>)")
    return (RawItem(record=rss_record(e), line=n) for n, e in enumerate(entries, 1))


def rss_record(item: Element) -> dict[str, Any]:
    """Every child element, plus the normalised keys; guid, else link, is the id."""
    record = children_dict(item)
    link = _text(item, "link")
    record.update(
        id=_text(item, "guid") or link,
        title=_text(item, "title"),
        link=link,
        description=_text(item, "description") or _text(item, "encoded"),  # content:encoded
        author=_text(item, "author") or _text(item, "creator"),  # dc:creator
        published=_text(item, "pubDate") or _text(item, "date"),  # dc:date
    )
    return record


def atom_record(entry: Element, feed_author: str | None = None) -> dict[str, Any]:
    """Every child element, plus the normalised keys; <id>, else the alternate link, is the id."""
    record = children_dict(entry)
    link = _atom_link(entry)
    record.update(
        id=_text(entry, "id") or link,
        title=_text(entry, "title"),
        link=link,
        description=_text(entry, "summary") or _text(entry, "content"),
        author=_atom_author(entry) or feed_author,  # an entry inherits the feed's author (RFC 4287 4.2.1)
        # <published> first: the key is also Atom's own element name, and must not be clobbered by <updated>.
        published=_text(entry, "published") or _text(entry, "updated"),
    )
    return record


def children_dict(element: Element) -> dict[str, Any]:
    """Child elements by local name; a repeated name (several <category>) becomes a list."""
    result: dict[str, Any] = {}
    repeated: set[str] = set()
    for child in element:
        key, value = local_name(child.tag), element_value(child)
        if key not in result:
            result[key] = value
        elif key in repeated:
            result[key].append(value)
        else:
            result[key] = [result[key], value]
            repeated.add(key)
    return result


def element_value(element: Element) -> Any:
    """Text if any; else nested children as a dict; else the attributes (<link href=.../>); else ""."""
    if element.get("type") == "xhtml":  # Atom inline XHTML: keep the markup as a string
        return _inner_xml(element)
    text = (element.text or "").strip()
    if len(element):
        return children_dict(element)
    if text:
        return text
    if element.attrib:
        return {local_name(name): value for name, value in element.attrib.items()}
    return ""


def _inner_xml(element: Element) -> str:
    """The markup inside `element`, with namespace prefixes dropped (`<div>`, not `<html:div xmlns:html=...>`)."""
    parts = [element.text or ""]
    for child in element:
        plain = deepcopy(child)
        for node in plain.iter():
            node.tag = local_name(node.tag)
            node.attrib = {local_name(name): value for name, value in node.attrib.items()}
        parts.append(tostring(plain, encoding="unicode"))
    return "".join(parts).strip()


def _first(element: Element, name: str) -> Element | None:
    for child in element:
        if local_name(child.tag) == name:
            return child
    return None


def _text(element: Element, name: str) -> str | None:
    """Text of the first child called `name`, None when absent or blank."""
    child = _first(element, name)
    if child is None:
        return None
    value = element_value(child)
    return value if isinstance(value, str) and value else None


def _atom_link(entry: Element) -> str | None:
    """The rel="alternate" link (rel omitted means alternate), else the first link with an href."""
    links = [child for child in entry if local_name(child.tag) == "link" and child.get("href")]
    for link in links:
        if link.get("rel", "alternate") == "alternate":
            return link.get("href")
    return links[0].get("href") if links else None


def _atom_author(element: Element) -> str | None:
    author = _first(element, "author")
    if author is None:
        return None
    return _text(author, "name") or _text(author, "email")
