"""Text helpers shared by loaders, the adapter (queries, BM25) and the JS@K metric."""

from __future__ import annotations

import html
import re

# A short English stop-word list (function words only): queries and JS@K terms keep every
# content word, including product words such as "set" or "kit".
STOPWORDS = frozenset(
    """a an and are as at be but by for from has have in into is it its of on or that the their
    this to was were will with without your you our we &amp amp s t""".split()
)
_TAG = re.compile(r"<[^>]*>")
_TERM = re.compile(r"[a-z0-9]+")
_SPACE = re.compile(r"\s+")


def strip_html(text: str) -> str:
    """Drop tags and entities from fragments such as the 2018 Magazine_Subscriptions titles."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


def has_html(text: str) -> bool:
    return bool(_TAG.search(text)) or "&amp;" in text or "&lt;" in text


def terms(text: str) -> list[str]:
    """Lower-cased alphanumeric terms minus stop-words, in order, duplicates kept."""
    return [t for t in _TERM.findall(text.lower()) if t not in STOPWORDS]


def unique_terms(text: str) -> list[str]:
    """``terms`` with duplicates removed, first occurrence kept (the HEM query rule)."""
    return list(dict.fromkeys(terms(text)))
