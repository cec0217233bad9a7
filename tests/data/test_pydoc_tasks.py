"""The pydoc GLUE-style tasks: every passage really comes from its labelled section (checked
against the raw stdlib text), splits are disjoint and balanced, pairs are labelled by section."""

import collections
import re
from pydoc_data.topics import topics

import numpy as np

from peft_jax.data import pydoc_tasks


def _normalised(text):
  return ' '.join(text.split())


def test_topic_classification_labels_splits_and_balance():
  train, test = pydoc_tasks.topic_classification(
    num_classes=6, max_per_class=40, test_fraction=0.25
  )
  assert train.num_labels == test.num_labels == 6
  assert train.label_names == test.label_names
  assert not set(train.texts) & set(test.texts)
  # Stratified: each class has the same count (every chosen section has >= 40 passages).
  assert collections.Counter(train.labels.tolist()) == {k: 30 for k in range(6)}
  assert collections.Counter(test.labels.tolist()) == {k: 10 for k in range(6)}
  flat = {name: _normalised(text) for name, text in topics.items()}
  for task in (train, test):
    for text, label in zip(task.texts, task.labels):
      owners = [name for name, body in flat.items() if text in body]
      # The passage is a (prefix of a) paragraph of its own section and of no other one.
      assert owners == [task.label_names[label]], (text[:60], owners)
      assert 12 <= len(text.split()) <= 64


def test_same_section_pairs_and_heldout_text():
  train, test = pydoc_tasks.same_section_pairs(num_train=64, num_test=32)
  src_train, src_test = pydoc_tasks.topic_classification()
  section = {t: src_train.label_names[l] for t, l in zip(src_train.texts, src_train.labels)}
  section.update({t: src_test.label_names[l] for t, l in zip(src_test.texts, src_test.labels)})
  for task, src in ((train, src_train), (test, src_test)):
    assert np.mean(task.labels) == 0.5
    for a, b, same in zip(task.texts, task.pairs, task.labels):
      assert a in src.texts and b in src.texts  # no test passage in train pairs and back
      assert (section[a] == section[b]) == bool(same)
  held = pydoc_tasks.heldout_passages(num=40)
  used = set(pydoc_tasks.task_topics())
  flat = {name: _normalised(text) for name, text in topics.items()}
  owners = {next(n for n, body in flat.items() if h in body) for h in held}
  assert not owners & used and len(owners) > 10
  assert re.fullmatch(r'python-\d+\.\d+\.\d+:[0-9a-f]{16}', pydoc_tasks.source_fingerprint())
