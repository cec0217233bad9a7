"""BBH-style algorithmic tasks, small enough for a tiny model, in BIG-Bench Hard's task format.

Each generator returns ``{'input', 'target', 'completion'}``: ``input``/``target`` exactly as a BBH
task file stores them (the target is the bare answer), and ``completion`` a short chain of thought
ending with "So the answer is <target>." as BBH's CoT exemplars do. Task names are BBH's own.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List

_SORT_WORDS = (
  'apple',
  'river',
  'stone',
  'cloud',
  'bread',
  'horse',
  'lamp',
  'garden',
  'table',
  'window',
  'candle',
  'forest',
  'music',
  'paper',
  'silver',
  'tiger',
  'ocean',
  'pencil',
  'rabbit',
  'mirror',
  'basket',
  'dragon',
  'flower',
  'hammer',
  'island',
  'jacket',
  'kettle',
  'ladder',
  'monkey',
  'needle',
  'orange',
  'pepper',
  'quilt',
  'rocket',
  'saddle',
  'tunnel',
  'violet',
  'wagon',
  'yellow',
  'zebra',
  'anchor',
  'button',
  'castle',
  'desert',
  'engine',
  'feather',
  'guitar',
  'helmet',
)

_BRACKETS = (('(', ')'), ('[', ']'), ('{', '}'), ('<', '>'))

_OBJECT_CATEGORIES = {
  'fruits': ('apple', 'banana', 'peach', 'plum', 'grape', 'orange'),
  'vegetables': ('carrot', 'onion', 'potato', 'cabbage', 'yam', 'celery stalk'),
  'animals': ('cat', 'dog', 'goat', 'rabbit', 'pig', 'cow'),
  'musical instruments': ('piano', 'flute', 'drum', 'violin', 'trumpet', 'accordion'),
}
_PLURALS = {'peach': 'peaches', 'potato': 'potatoes', 'celery stalk': 'celery stalks'}
_NUMBER_WORDS = {1: 'a', 2: 'two', 3: 'three'}

_PLAYERS = ('Alice', 'Bob', 'Claire')
_BALL_COLOURS = ('red', 'blue', 'green', 'yellow', 'white', 'pink', 'black', 'brown')
_OPTION_LETTERS = ('A', 'B', 'C')


def _answer(reasoning: str, target: str) -> str:
  return f'{reasoning} So the answer is {target}.'


def boolean_expressions(rng: random.Random) -> Dict:
  """'not ( True or False ) and True is' -> 'False' (Python's precedence: not > and > or)."""

  def literal():
    return rng.choice(('True', 'False'))

  def term():
    shape = rng.random()
    if shape < 0.4:
      text, group = literal(), None
    elif shape < 0.8:
      group = f'( {literal()} {rng.choice(("and", "or"))} {literal()} )'
      text = group
    else:
      group = f'( not {literal()} )'
      text = group
    if rng.random() < 0.3:
      text = 'not ' + text
    return text, group

  terms = [term() for _ in range(rng.randint(2, 3))]
  expression = terms[0][0]
  for text, _ in terms[1:]:
    expression += f' {rng.choice(("and", "or"))} {text}'
  value = str(eval(expression))  # pylint: disable=eval-used  (only True/False/and/or/not/parens)
  steps = []
  flat = expression
  for _, group in terms:
    if group is not None:
      group_value = str(eval(group))  # pylint: disable=eval-used
      steps.append(f'{group} = {group_value}.')
      flat = flat.replace(group, group_value, 1)
  reasoning = ' '.join(steps + [f'{flat} = {value}.'])
  return {'input': f'{expression} is', 'target': value, 'completion': _answer(reasoning, value)}


def word_sorting(rng: random.Random) -> Dict:
  words = rng.sample(_SORT_WORDS, rng.randint(3, 5))
  ordered = ' '.join(sorted(words))
  return {
    'input': 'Sort the following words alphabetically: List: ' + ' '.join(words),
    'target': ordered,
    'completion': _answer(f'In alphabetical order the words are {ordered}.', ordered),
  }


def dyck_languages(rng: random.Random) -> Dict:
  """A bracket prefix with 1-4 brackets left open; the target closes them in order."""
  sequence: List[str] = []
  stack: List[str] = []
  length = rng.randint(3, 8)
  while len(sequence) < length or not stack:
    if stack and rng.random() < 0.35 and len(sequence) < length:
      sequence.append(stack.pop())
    else:
      opening, closing = rng.choice(_BRACKETS)
      sequence.append(opening)
      stack.append(closing)
    if len(stack) > 4:
      sequence.append(stack.pop())
  target = ' '.join(reversed(stack))
  still_open = ' '.join(s for s in _open_brackets(sequence))
  return {
    'input': 'Complete the rest of the sequence, making sure that the parentheses are '
    'closed properly. Input: ' + ' '.join(sequence),
    'target': target,
    'completion': _answer(f'The brackets still open are {still_open}.', target),
  }


def _open_brackets(sequence: List[str]) -> List[str]:
  closing_of = dict(_BRACKETS)
  stack: List[str] = []
  for symbol in sequence:
    if symbol in closing_of:
      stack.append(symbol)
    else:
      stack.pop()
  return stack


def multistep_arithmetic_two(rng: random.Random) -> Dict:
  """'((a op b) op (c op d)) =' with single-digit (possibly negative) numbers."""
  numbers = [rng.randint(-9, 9) for _ in range(4)]
  ops = [rng.choice('+-*') for _ in range(3)]
  left = f'({numbers[0]} {ops[0]} {numbers[1]})'
  right = f'({numbers[2]} {ops[1]} {numbers[3]})'
  left_value = _apply(numbers[0], ops[0], numbers[1])
  right_value = _apply(numbers[2], ops[1], numbers[3])
  value = _apply(left_value, ops[2], right_value)
  reasoning = (
    f'{left} = {left_value}. {right} = {right_value}. '
    f'{left_value} {ops[2]} {right_value} = {value}.'
  )
  return {
    'input': f'({left} {ops[2]} {right}) =',
    'target': str(value),
    'completion': _answer(reasoning, str(value)),
  }


def _apply(a: int, op: str, b: int) -> int:
  return a + b if op == '+' else a - b if op == '-' else a * b


def object_counting(rng: random.Random) -> Dict:
  category = rng.choice(sorted(_OBJECT_CATEGORIES))
  others = [c for c in sorted(_OBJECT_CATEGORIES) if c != category]
  wanted = rng.sample(_OBJECT_CATEGORIES[category], rng.randint(1, 3))
  distractors = rng.sample(_OBJECT_CATEGORIES[rng.choice(others)], rng.randint(1, 2))
  items = [(name, rng.randint(1, 3), True) for name in wanted]
  items += [(name, rng.randint(1, 3), False) for name in distractors]
  rng.shuffle(items)
  phrases = [_count_phrase(name, count) for name, count, _ in items]
  listing = (
    (', '.join(phrases[:-1]) + ', and ' + phrases[-1])
    if len(phrases) > 2
    else (' and '.join(phrases))
  )
  counted = [(name, count) for name, count, keep in items if keep]
  total = sum(count for _, count in counted)
  reasoning = ' '.join(f'{_count_phrase(n, c)} = {c}.' for n, c in counted)
  if len(counted) > 1:
    reasoning += ' ' + ' + '.join(str(c) for _, c in counted) + f' = {total}.'
  return {
    'input': f'I have {listing}. How many {category} do I have?',
    'target': str(total),
    'completion': _answer(reasoning, str(total)),
  }


def _count_phrase(name: str, count: int) -> str:
  if count == 1:
    return ('an ' if name[0] in 'aeiou' else 'a ') + name
  return f'{_NUMBER_WORDS[count]} {_PLURALS.get(name, name + "s")}'


def tracking_shuffled_objects_three_objects(rng: random.Random) -> Dict:
  colours = rng.sample(_BALL_COLOURS, 3)
  holding = dict(zip(_PLAYERS, colours))
  swaps = [tuple(rng.sample(_PLAYERS, 2)) for _ in range(3)]
  states = []
  for first, second in swaps:
    holding[first], holding[second] = holding[second], holding[first]
    states.append(', '.join(f'{p} {holding[p]}' for p in _PLAYERS) + '.')
  asked = rng.choice(_PLAYERS)
  letter = _OPTION_LETTERS[colours.index(holding[asked])]
  start = ', '.join(f'{p} has a {c} ball' for p, c in zip(_PLAYERS[:2], colours[:2]))
  start += f', and {_PLAYERS[2]} has a {colours[2]} ball'
  moves = ' '.join(
    f'{word}, {a} and {b} swap balls.' for word, (a, b) in zip(('First', 'Then', 'Finally'), swaps)
  )
  options = '\n'.join(f'({l}) {c} ball' for l, c in zip(_OPTION_LETTERS, colours))
  return {
    'input': f'{start}. {moves} At the end, {asked} has the\nOptions:\n{options}',
    'target': f'({letter})',
    'completion': _answer(' '.join(states), f'({letter})'),
  }


def navigate(rng: random.Random) -> Dict:
  """Turn/step instructions from the origin facing north; target 'Yes' iff they end there."""
  want_return = rng.random() < 0.5
  for _ in range(1000):
    instructions = []
    for _ in range(rng.randint(3, 5)):
      kind = rng.random()
      if kind < 0.55:
        steps = rng.randint(1, 4)
        instructions.append(f'Take {steps} step{"s" if steps > 1 else ""}.')
      else:
        instructions.append(rng.choice(('Turn around.', 'Turn left.', 'Turn right.')))
    positions, returns = _walk(instructions)
    if returns == want_return and positions:
      break
  target = 'Yes' if returns else 'No'
  reasoning = 'Positions: ' + ', '.join(f'({x}, {y})' for x, y in positions) + '.'
  return {
    'input': 'If you follow these instructions, do you return to the starting point? '
    + ' '.join(instructions)
    + '\nOptions:\n- Yes\n- No',
    'target': target,
    'completion': _answer(reasoning, target),
  }


def _walk(instructions: List[str]):
  x, y, dx, dy = 0, 0, 0, 1
  positions = []
  for instruction in instructions:
    words = instruction.rstrip('.').split()
    if words[0] == 'Take':
      x, y = x + dx * int(words[1]), y + dy * int(words[1])
      positions.append((x, y))
    elif words[1] == 'around':
      dx, dy = -dx, -dy
    elif words[1] == 'left':
      dx, dy = -dy, dx
    else:
      dx, dy = dy, -dx
  return positions, (x, y) == (0, 0)


BBH_GENERATORS: Dict[str, Callable[[random.Random], Dict]] = {
  'boolean_expressions': boolean_expressions,
  'word_sorting': word_sorting,
  'dyck_languages': dyck_languages,
  'multistep_arithmetic_two': multistep_arithmetic_two,
  'object_counting': object_counting,
  'tracking_shuffled_objects_three_objects': tracking_shuffled_objects_three_objects,
  'navigate': navigate,
}
BBH_TASKS = tuple(BBH_GENERATORS)
