"""Answer-text normalisation shared by the data that writes fact questions and the scorer that
reads the answers (docs/REAL.md, "Scoring")."""

from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES_RE = re.compile(r'\b(a|an|the)\b')
_PUNCTUATION = frozenset(string.punctuation)


def normalize_fact(text: str) -> str:
  """Fact-answer normalisation: accents folded (NFKD, combining marks dropped: ``'Brasília'`` ->
  ``'brasilia'``), lower-case, ``'&'`` -> ``'and'``, hyphens and slashes to spaces
  (``'Nur-Sultan'`` -> ``'nur sultan'``), every other punctuation character (ASCII, or Unicode
  category P*: curly quotes, dashes) dropped (``'Washington, D.C.'`` -> ``'washington dc'``), the
  articles a/an/the dropped, whitespace collapsed."""
  text = unicodedata.normalize('NFKD', text)
  text = ''.join(char for char in text if not unicodedata.combining(char)).lower()
  text = text.replace('&', ' and ')
  text = re.sub(r'[-/\u2010-\u2015]', ' ', text)
  text = ''.join(
    char
    for char in text
    if char not in _PUNCTUATION and not unicodedata.category(char).startswith('P')
  )
  text = _ARTICLES_RE.sub(' ', text)
  return ' '.join(text.split())


def contains_phrase(text: str, phrase: str) -> bool:
  """Whether the normalised ``phrase`` occurs in the normalised ``text`` as whole words."""
  needle = normalize_fact(phrase)
  return bool(needle) and f' {needle} ' in f' {normalize_fact(text)} '
