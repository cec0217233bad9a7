"""GLUE-style tasks on real text that ships with Python: the sections of ``pydoc_data.topics``.

``pydoc_data.topics.topics`` maps each of the ~80 help topics of the language reference
(``'assert'``, ``'typesmapping'``, ``'formatstrings'``, ...) to its text. Passages are its
paragraphs (blank-line separated, whitespace collapsed, at least ``min_words`` words, cut to
``max_words``); a paragraph that occurs in more than one topic (``'compound'`` repeats the
``if`` / ``while`` / ``try`` sections) is dropped everywhere, so no passage has two labels.

Tasks (deterministic for a seed and a Python version, whose documentation they read):

* :func:`topic_classification` — single sentence, like SST-2 / TREC: which section a passage
  comes from, over the ``num_classes`` largest sections (at most ``max_per_class`` passages
  each, the rest of every section split ``test_fraction`` to test, stratified).
* :func:`same_section_pairs` — sentence pair, like MRPC / QQP: do two passages come from the
  same section (balanced labels; train and test pairs are built from disjoint passages).
* :func:`heldout_passages` — general text no task trains on (the sections left out), for
  label-free forgetting measurements (embedding geometry against the base model).

A task is a :class:`TextTask`: texts (and second texts for pairs), integer labels, label names.
Tokenisation belongs to the caller (``peft_jax.hub.encode_texts``).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import sys
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class TextTask:
  """One split of a text classification task.

  Attributes:
    name: task name (``'pydoc_topics'``, ``'pydoc_same_section'``).
    split: ``'train'`` or ``'test'``.
    texts: first segments, one per example.
    pairs: second segments (pair tasks) or ``None``.
    labels: ``[N] int32`` class indices.
    label_names: name of each class index.
  """

  name: str
  split: str
  texts: tuple[str, ...]
  pairs: Optional[tuple[str, ...]]
  labels: np.ndarray
  label_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.texts)

  @property
  def num_labels(self) -> int:
    return len(self.label_names)


def _topics() -> dict[str, str]:
  from pydoc_data.topics import topics  # pylint: disable=g-import-not-at-top  (stdlib, large)

  return dict(topics)


def pydoc_passages(min_words: int = 12, max_words: int = 64) -> dict[str, list[str]]:
  """``{topic: [passage, ...]}``, paragraphs unique to one topic (module docstring), in order."""
  if min_words < 1 or max_words < min_words:
    raise ValueError(
      f'pydoc_passages: need 1 <= min_words <= max_words, got {min_words}, {max_words}'
    )
  by_topic: dict[str, list[str]] = {}
  seen: collections.Counter = collections.Counter()
  for topic, text in sorted(_topics().items()):
    paragraphs = []
    for raw in re.split(r'\n\s*\n', text):
      words = raw.split()
      if len(words) < min_words or set(raw.strip()) <= set('*=-^~ \n'):
        continue
      paragraphs.append(' '.join(words[:max_words]))
    unique = list(dict.fromkeys(paragraphs))
    seen.update(unique)
    by_topic[topic] = unique
  return {t: [p for p in ps if seen[p] == 1] for t, ps in by_topic.items()}


def _order(items: list[str], seed: int, salt: str) -> list[str]:
  """A seeded permutation that does not depend on numpy's global state or hash randomisation."""
  key = lambda s: hashlib.sha256(f'{seed}:{salt}:{s}'.encode()).hexdigest()
  return sorted(items, key=key)


def task_topics(num_classes: int = 6, min_words: int = 12, max_words: int = 64) -> tuple[str, ...]:
  """The ``num_classes`` sections with the most passages (ties by name), in that order."""
  passages = pydoc_passages(min_words, max_words)
  ranked = sorted(passages, key=lambda t: (-len(passages[t]), t))
  if num_classes < 2 or num_classes > len(ranked):
    raise ValueError(
      f'num_classes={num_classes}: need 2..{len(ranked)} (pydoc has {len(ranked)} topics)'
    )
  return tuple(ranked[:num_classes])


def topic_classification(
  num_classes: int = 6,
  max_per_class: int = 40,
  test_fraction: float = 0.25,
  seed: int = 0,
  min_words: int = 12,
  max_words: int = 64,
) -> tuple[TextTask, TextTask]:
  """``(train, test)`` of section classification over :func:`task_topics` (module docstring)."""
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test_fraction={test_fraction} must be in (0, 1)')
  passages = pydoc_passages(min_words, max_words)
  names = task_topics(num_classes, min_words, max_words)
  splits = {'train': ([], []), 'test': ([], [])}
  for label, topic in enumerate(names):
    ordered = _order(passages[topic], seed, topic)[:max_per_class]
    n_test = max(1, int(round(test_fraction * len(ordered))))
    if len(ordered) - n_test < 1:
      raise ValueError(f'topic {topic!r} has {len(ordered)} passages: too few to split')
    for split, chunk in (('test', ordered[:n_test]), ('train', ordered[n_test:])):
      splits[split][0].extend(chunk)
      splits[split][1].extend([label] * len(chunk))
  out = []
  for split in ('train', 'test'):
    texts, labels = splits[split]
    order = _order([f'{i:06d}' for i in range(len(texts))], seed, 'shuffle-' + split)
    index = [int(i) for i in order]
    out.append(
      TextTask(
        name='pydoc_topics',
        split=split,
        texts=tuple(texts[i] for i in index),
        pairs=None,
        labels=np.asarray([labels[i] for i in index], np.int32),
        label_names=names,
      )
    )
  return out[0], out[1]


def _pairs(task: TextTask, num_pairs: int, seed: int) -> tuple[list, list, list]:
  rng = np.random.default_rng(seed)
  by_label: dict[int, list[str]] = collections.defaultdict(list)
  for text, label in zip(task.texts, task.labels):
    by_label[int(label)].append(text)
  labels = sorted(by_label)
  firsts, seconds, same = [], [], []
  for i in range(num_pairs):
    positive = i % 2 == 0
    a = labels[rng.integers(len(labels))]
    if positive:
      b = a
    else:
      b = [x for x in labels if x != a][rng.integers(len(labels) - 1)]
    first = by_label[a][rng.integers(len(by_label[a]))]
    second = by_label[b][rng.integers(len(by_label[b]))]
    if positive and len(by_label[a]) > 1:
      while second == first:
        second = by_label[b][rng.integers(len(by_label[b]))]
    firsts.append(first)
    seconds.append(second)
    same.append(1 if positive else 0)
  return firsts, seconds, same


def same_section_pairs(
  num_train: int = 256,
  num_test: int = 128,
  num_classes: int = 6,
  max_per_class: int = 40,
  seed: int = 0,
  min_words: int = 12,
  max_words: int = 64,
) -> tuple[TextTask, TextTask]:
  """``(train, test)`` pairs labelled 1 when both passages come from the same section.

  Pairs are drawn (half positive) from the passages of :func:`topic_classification`'s train
  split for train and of its test split for test, so no test passage is seen in training.
  """
  train_src, test_src = topic_classification(
    num_classes, max_per_class, seed=seed, min_words=min_words, max_words=max_words
  )
  out = []
  for split, src, n in (('train', train_src, num_train), ('test', test_src, num_test)):
    firsts, seconds, same = _pairs(src, n, seed + (0 if split == 'train' else 1))
    out.append(
      TextTask(
        name='pydoc_same_section',
        split=split,
        texts=tuple(firsts),
        pairs=tuple(seconds),
        labels=np.asarray(same, np.int32),
        label_names=('different', 'same'),
      )
    )
  return out[0], out[1]


def heldout_passages(
  num: int = 64, num_classes: int = 6, seed: int = 0, min_words: int = 12, max_words: int = 64
) -> list[str]:
  """``num`` passages from the sections the tasks leave out (round-robin over sections, so
  the set spans many topics)."""
  passages = pydoc_passages(min_words, max_words)
  excluded = set(task_topics(num_classes, min_words, max_words))
  rest = {t: _order(ps, seed, t) for t, ps in sorted(passages.items()) if t not in excluded and ps}
  out: list[str] = []
  depth = 0
  while len(out) < num:
    added = False
    for topic in sorted(rest):
      if depth < len(rest[topic]):
        out.append(rest[topic][depth])
        added = True
        if len(out) == num:
          break
    if not added:
      raise ValueError(f'heldout_passages: only {len(out)} held-out passages exist, asked {num}')
    depth += 1
  return out


def source_fingerprint() -> str:
  """``'python-X.Y.Z:<sha256 of the topics text>'``: the tasks depend on this exact text."""
  digest = hashlib.sha256()
  for topic, text in sorted(_topics().items()):
    digest.update(topic.encode())
    digest.update(text.encode())
  version = '.'.join(str(v) for v in sys.version_info[:3])
  return f'python-{version}:{digest.hexdigest()[:16]}'
