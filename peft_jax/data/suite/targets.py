"""Target domains for fine-tuning, absent from the general pretraining text.

Both are stored in GSM8K's format, JSONL ``{"question", "answer"}``, where the answer is a short
worked solution whose last line is ``#### <final answer>``, so one scorer (exact match on the
text after ``####``) reads both:

* ``gsm``: one- and two-step grade-school word problems with small whole numbers; every solution
  line is an equation ``a op b = c``.
* ``cipher``: letter transformations of short nonsense words: reverse the letters, or shift each
  letter forward/backward by k places in the alphabet (wrapping z -> a).
"""

from __future__ import annotations

import random
import string
from typing import Dict, Sequence

_ITEMS = ('apples', 'pens', 'cookies', 'marbles', 'stickers', 'books', 'shells', 'cards')


def gsm_problem(rng: random.Random, names: Sequence[str]) -> Dict:
  """One GSM8K-style word problem: {'question', 'answer'} with '#### n' on the last line."""
  name = rng.choice(names)
  item = rng.choice(_ITEMS)
  kind = rng.randrange(7)
  if kind == 0:
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    question = f'{name} has {a} {item}. {name} buys {b} more. How many {item} does {name} have now?'
    lines, result = [f'{name} has {a} + {b} = {a + b} {item}.'], a + b
  elif kind == 1:
    a = rng.randint(5, 40)
    b = rng.randint(1, a - 1)
    question = (
      f'{name} has {a} {item}. {name} gives {b} to a friend. How many {item} does {name} have left?'
    )
    lines, result = [f'{name} has {a} - {b} = {a - b} {item} left.'], a - b
  elif kind == 2:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    question = (
      f'{name} buys {a} bags of {item}. Each bag holds {b} {item}. How many {item} does {name} buy?'
    )
    lines, result = [f'{name} buys {a} * {b} = {a * b} {item}.'], a * b
  elif kind == 3:
    b, share = rng.randint(2, 6), rng.randint(2, 9)
    a = b * share
    question = (
      f'{name} has {a} {item} and shares them equally among {b} friends. How many '
      f'{item} does each friend get?'
    )
    lines, result = [f'Each friend gets {a} / {b} = {share} {item}.'], share
  elif kind == 4:
    a, b, c = rng.randint(1, 20), rng.randint(2, 6), rng.randint(2, 9)
    question = (
      f'{name} has {a} {item}. {name} buys {b} bags with {c} {item} in each. How many '
      f'{item} does {name} have now?'
    )
    lines = [
      f'{name} buys {b} * {c} = {b * c} {item}.',
      f'{name} has {a} + {b * c} = {a + b * c} {item} now.',
    ]
    result = a + b * c
  elif kind == 5:
    a, b = rng.randint(2, 12), rng.randint(2, 7)
    c = rng.randint(1, a * b - 1)
    question = (
      f'{name} earns {a} dollars a day for {b} days and then spends {c} dollars. How '
      f'many dollars does {name} have left?'
    )
    lines = [
      f'{name} earns {a} * {b} = {a * b} dollars.',
      f'{name} has {a * b} - {c} = {a * b - c} dollars left.',
    ]
    result = a * b - c
  else:
    a = rng.randint(3, 25)
    question = (
      f'{name} reads {a} pages on Monday and twice as many on Tuesday. How many pages '
      f'does {name} read in total?'
    )
    lines = [
      f'On Tuesday {name} reads {a} * 2 = {2 * a} pages.',
      f'In total {name} reads {a} + {2 * a} = {3 * a} pages.',
    ]
    result = 3 * a
  return {'question': question, 'answer': '\n'.join(lines) + f'\n#### {result}'}


def _shift(letter: str, amount: int) -> str:
  return chr((ord(letter) - ord('a') + amount) % 26 + ord('a'))


def cipher_problem(rng: random.Random) -> Dict:
  """One letter-transformation problem: {'question', 'answer'} with '#### word' last."""
  word = ''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
  kind = rng.randrange(3)
  if kind == 0:
    result = word[::-1]
    question = f'Reverse the letters of the word {word}.'
    solution = f'The letters are {" ".join(word)}. Reversed they are {" ".join(result)}.'
  else:
    amount = rng.randint(1, 3)
    signed = amount if kind == 1 else -amount
    direction = 'forward' if kind == 1 else 'backward'
    result = ''.join(_shift(c, signed) for c in word)
    question = f'Shift each letter of the word {word} {direction} by {amount} in the alphabet.'
    sign = '+' if kind == 1 else '-'
    solution = ' '.join(f'{c}{sign}{amount}={_shift(c, signed)}' for c in word) + '.'
  return {'question': question, 'answer': f'{solution}\n#### {result}'}
