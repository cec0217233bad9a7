"""Answer extraction and scoring for generated text: numeric match, BBH, NQ-open, pass@k.

Every scorer here is a pure function of strings (and, for pass@k, of counts). The conventions
follow the evaluation code the PEFT-Arena numbers come from (docs/METRICS.md, "Task scoring"):

* **Numeric match (GSM8K, MATH-500, "NM").** The model's final answer is taken from, in order of
  preference, a ``\\boxed{...}`` (nested braces allowed; the last one wins), a GSM8K-style
  ``#### answer`` line, a trailing "the answer is ..." phrase, and finally the last number in the
  text. Answers are compared as exact rationals when both parse as numbers (so ``'3.0' == '3'``,
  ``'1,000' == '1000'``, ``'\\frac{1}{2}' == '0.5'``, ``'$18.00' == '18'``), and as normalised
  strings otherwise (MATH answers such as ``'x^2+1'`` or ``'(1,2)'``).
* **BBH.** The answer is what follows the last "answer is"; multiple-choice targets such as
  ``'(A)'`` are compared on the option letter, free-form targets on the first line of the answer
  with a trailing period dropped.
* **NQ-open.** SQuAD normalisation (lower-case, drop punctuation, drop the articles a/an/the,
  collapse whitespace), exact match against any of the gold aliases.
* **Closed-book facts (docs/REAL.md).** ``normalize_fact`` (``peft_jax.common.text``; accents folded, lower-case,
  hyphens to spaces, other punctuation dropped, articles dropped) and *containment*: correct when
  some gold alias occurs as a whole-word span of the normalised answer and no distractor does
  (:func:`score_contains`). An instruct model answers in a sentence ("The capital of France is
  Paris."), which exact match would score 0.
* **pass@k.** The unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``, in the
  numerically stable product form ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``.
"""

from __future__ import annotations

import fractions
import re
import string
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from peft_jax.common.text import contains_phrase, normalize_fact

Array = jax.Array

# ---------------------------------------------------------------------------------------------
# Numeric answers.
# ---------------------------------------------------------------------------------------------

# A number as people write it: optional sign, thousands separators, decimals, or a simple
# fraction a/b. The thousands group is only taken when it is exactly 3 digits so that "1,2" in a
# list stays two numbers.
_NUMBER_PATTERN = (
  r'(?<![\w.])[-−]?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?'
  r'(?:\s?/\s?[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)?|(?<![\w.])[-−]?\.\d+'
)
_NUMBER_RE = re.compile(_NUMBER_PATTERN)

_LATEX_FRAC_RE = re.compile(r'\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}')
# \frac12 and \frac{1}2 shorthands: single-character arguments without braces.
_LATEX_FRAC_SHORT_RE = re.compile(r'\\[dt]?frac\s*(\{[^{}]*\}|\w)\s*(\{[^{}]*\}|\w)')
_TEXT_RE = re.compile(r'\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}')
# Leading "x =" / "k=" in an answer such as \boxed{x = 5}.
_ASSIGNMENT_RE = re.compile(r'^[a-zA-Z]\w*\s*=\s*')
# A trailing unit: words after a space ("18 dollars", "5 cm"), or %, degrees. Letters glued to the
# number are not a unit ("2x" is an expression, not 2).
_UNIT_SUFFIX_RE = re.compile(
  r'^(.*?\d)(?:\s+[a-zA-Z][a-zA-Z.\s]*|\s*(?:%|\\%|°|\^\\circ|\^\{\\circ\}))$'
)


def extract_boxed(text: str) -> Optional[str]:
  """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced.

  ``'so \\boxed{\\frac{1}{2}}.'`` -> ``'\\frac{1}{2}'``. Also accepts the brace-less form
  ``'\\boxed 5'``. Returns ``None`` when there is no complete box.
  """
  start = max(text.rfind('\\boxed'), text.rfind('\\fbox'))
  if start < 0:
    return None
  rest = text[start:]
  rest = rest[len('\\boxed') :] if rest.startswith('\\boxed') else rest[len('\\fbox') :]
  if rest.startswith(' ') and not rest.lstrip().startswith('{'):
    # "\boxed 5" form: the token up to the next whitespace or "$".
    token = re.match(r'\s*([^\s$]+)', rest)
    return token.group(1) if token else None
  rest = rest.lstrip()
  if not rest.startswith('{'):
    return None
  depth = 0
  for position, char in enumerate(rest):
    if char == '{':
      depth += 1
    elif char == '}':
      depth -= 1
      if depth == 0:
        return rest[1:position]
  return None


def extract_gsm8k_reference(answer: str) -> str:
  """The final answer of a GSM8K reference solution: the text after the last ``'#### '``.

  Raises:
    ValueError: if the reference has no ``####`` marker (it is not in GSM8K format).
  """
  if '####' not in answer:
    raise ValueError(f"GSM8K reference answer has no '####' marker: {answer[-80:]!r}")
  return answer.rsplit('####', 1)[1].strip()


def extract_last_number(text: str) -> Optional[str]:
  """The last number written in ``text`` (sign, commas, decimals, a/b kept), or ``None``."""
  text = _LATEX_FRAC_RE.sub(lambda m: f'{m.group(1)}/{m.group(2)}', text)
  matches = _NUMBER_RE.findall(text)
  if not matches:
    return None
  return matches[-1].replace(' ', '')


def extract_numeric_answer(text: str) -> Optional[str]:
  """The final answer a model wrote, for numeric-match scoring.

  Preference order: last ``\\boxed{}``; text after the last ``####``; text after the last
  "answer is"; the last number anywhere. Returns the raw answer string (not yet normalised),
  or ``None`` if nothing answer-like is found.
  """
  boxed = extract_boxed(text)
  if boxed is not None:
    return boxed
  if '####' in text:
    tail = text.rsplit('####', 1)[1].strip()
    tail = tail.split('\n', 1)[0].strip()
    if tail:
      number = extract_last_number(tail)
      return number if number is not None else tail
  lowered = text.lower()
  marker = lowered.rfind('answer is')
  if marker >= 0:
    tail = text[marker + len('answer is') :].strip().lstrip(':').strip()
    tail = tail.split('\n', 1)[0].strip()
    number = extract_last_number(tail)
    if number is not None:
      return number
  return extract_last_number(text)


def _strip_latex_wrappers(answer: str) -> str:
  answer = answer.strip()
  # Math-mode delimiters and display wrappers that carry no value (the escaped dollar first, so
  # that its backslash does not survive the plain "$" removal).
  for token in ('\\$', '\\left', '\\right', '\\!', '\\,', '\\;', '\\:', '\\displaystyle', '$'):
    answer = answer.replace(token, '')
  answer = answer.replace('−', '-')
  answer = answer.replace('\\dfrac', '\\frac').replace('\\tfrac', '\\frac')
  answer = _TEXT_RE.sub(lambda m: m.group(1), answer)
  answer = answer.strip()
  while answer.endswith('.') and not re.search(r'\d\.$', answer[:-1] + 'x'):
    answer = answer[:-1].rstrip()
  return answer


def parse_number(answer: str) -> Optional[fractions.Fraction]:
  """Exact value of a numeric answer, or ``None`` if the answer is not a single number.

  Handles signs (incl. the Unicode minus), thousands commas, a leading ``$``/``\\$``, trailing
  periods, trailing units words (``'18 dollars'``, ``'5 cm'``), ``%``/degrees, ``x = 5``,
  decimals (``'3.0'`` equals ``'3'``), ``a/b`` and LaTeX ``\\frac{a}{b}``/``\\dfrac``/``\\tfrac``
  (also ``\\frac12``), and a sign in front of a fraction (``'-\\frac{1}{2}'``).
  """
  text = _strip_latex_wrappers(answer)
  text = _ASSIGNMENT_RE.sub('', text)
  text = text.rstrip('.').strip()
  unit_match = _UNIT_SUFFIX_RE.match(text)
  if unit_match:
    text = unit_match.group(1)
  text = text.replace('\\%', '').replace('%', '').strip()
  sign = 1
  if text.startswith('-') and text[1:].lstrip().startswith('\\frac'):
    sign, text = -1, text[1:].lstrip()
  frac = _LATEX_FRAC_SHORT_RE.fullmatch(text)
  if frac:
    numerator = parse_number(frac.group(1).strip('{}'))
    denominator = parse_number(frac.group(2).strip('{}'))
    if numerator is None or denominator is None or denominator == 0:
      return None
    return sign * numerator / denominator
  text = text.replace(' ', '')
  if not re.fullmatch(_NUMBER_PATTERN, text):
    return None
  text = text.replace(',', '')
  try:
    if '/' in text:
      numerator_text, denominator_text = text.split('/')
      denominator = fractions.Fraction(denominator_text)
      if denominator == 0:
        return None
      return sign * fractions.Fraction(numerator_text) / denominator
    return sign * fractions.Fraction(text)
  except (ValueError, ZeroDivisionError):
    return None


def normalize_math_answer(answer: str) -> str:
  """Canonical string of a (possibly non-numeric) final answer, for string comparison.

  Numbers become their exact reduced value (``'3.0'`` -> ``'3'``, ``'\\frac{2}{4}'`` ->
  ``'1/2'``); other answers lose whitespace, ``$``, ``\\left``/``\\right``, ``\\text{}``
  wrappers, trailing periods and the ``dfrac``/``tfrac`` spelling.
  """
  value = parse_number(answer)
  if value is not None:
    return str(value)
  text = _strip_latex_wrappers(answer)
  text = _ASSIGNMENT_RE.sub('', text)
  text = text.replace(' ', '').replace('^{\\circ}', '').replace('^\\circ', '')
  # \frac12 -> \frac{1}{2} so that both spellings compare equal.
  text = re.sub(r'\\frac(\w)(\w)', r'\\frac{\1}{\2}', text)
  text = re.sub(r'\\frac\{([^{}]*)\}(\w)', r'\\frac{\1}{\2}', text)
  # \sqrt3 -> \sqrt{3}: the brace-less argument spelling.
  text = re.sub(r'\\sqrt(\w)', r'\\sqrt{\1}', text)
  # x^{2} -> x^2: braces around a one-character exponent or subscript are optional in LaTeX.
  text = re.sub(r'([\^_])\{(\w)\}', r'\1\2', text)
  return text.rstrip('.')


def numeric_match(prediction: str, reference: str) -> bool:
  """Whether two final answers are equal: exactly as numbers, else as normalised strings."""
  predicted_value, reference_value = parse_number(prediction), parse_number(reference)
  if predicted_value is not None and reference_value is not None:
    return predicted_value == reference_value
  return normalize_math_answer(prediction) == normalize_math_answer(reference)


def score_numeric(generation: str, reference: str) -> float:
  """1.0 if the answer extracted from ``generation`` equals the ``reference`` answer, else 0.0.

  ``reference`` is the bare final answer (use :func:`extract_gsm8k_reference` on GSM8K's
  ``answer`` field first).
  """
  predicted = extract_numeric_answer(generation)
  if predicted is None:
    return 0.0
  return float(numeric_match(predicted, reference))


# ---------------------------------------------------------------------------------------------
# BBH: multiple choice and exact match after "So the answer is".
# ---------------------------------------------------------------------------------------------

_OPTION_RE = re.compile(r'\(([A-Z])\)')


def extract_bbh_answer(generation: str) -> str:
  """The text after the last "answer is" (case-insensitive), first line, trailing period cut.

  Without the phrase, the whole generation's first non-empty line is used.
  """
  lowered = generation.lower()
  marker = lowered.rfind('answer is')
  answer = generation[marker + len('answer is') :] if marker >= 0 else generation
  answer = answer.strip().lstrip(':').strip()
  answer = answer.split('\n', 1)[0].strip()
  answer = answer.strip('*').strip()
  if answer.endswith('.'):
    answer = answer[:-1].rstrip()
  return answer


def is_multiple_choice_target(target: str) -> bool:
  """BBH multiple-choice targets are an option in parentheses, e.g. ``'(A)'``."""
  return re.fullmatch(r'\([A-Z]\)', target.strip()) is not None


def score_bbh(generation: str, target: str) -> float:
  """BBH exact match. Multiple choice compares the option letter: the first ``(X)`` in the
  extracted answer, or a bare capital letter answer such as ``'B'``; free form compares the
  extracted answer to the target string exactly (after strip)."""
  answer = extract_bbh_answer(generation)
  target = target.strip()
  if is_multiple_choice_target(target):
    option = _OPTION_RE.search(answer)
    if option:
      letter = option.group(1)
    else:
      bare = re.match(r'^([A-Z])(?:$|[\s.:)])', answer)
      letter = bare.group(1) if bare else None
    return float(letter == target[1])
  return float(answer == target)


# ---------------------------------------------------------------------------------------------
# NQ-open: SQuAD-normalised exact match against any alias.
# ---------------------------------------------------------------------------------------------

_ARTICLES_RE = re.compile(r'\b(a|an|the)\b')
_PUNCTUATION = set(string.punctuation)


def normalize_squad(text: str) -> str:
  """SQuAD answer normalisation: lower, drop punctuation, drop articles, collapse whitespace."""
  text = text.lower()
  text = ''.join(char for char in text if char not in _PUNCTUATION)
  text = _ARTICLES_RE.sub(' ', text)
  return ' '.join(text.split())


def extract_short_answer(generation: str) -> str:
  """First non-empty line of a generation; the part after its last "answer is" if present, and
  without a leading "Answer:" label."""
  for line in generation.strip().split('\n'):
    line = line.strip()
    if line:
      marker = line.lower().rfind('answer is')
      if marker >= 0:
        line = line[marker + len('answer is') :].strip().lstrip(':').strip()
      return re.sub(r'^answer\s*:\s*', '', line, flags=re.IGNORECASE)
  return ''


def score_nq(generation: str, gold_answers: Sequence[str]) -> float:
  """1.0 if the normalised short answer equals any normalised gold alias, else 0.0."""
  if isinstance(gold_answers, str):
    raise TypeError(f'NQ gold answers must be a list of aliases, got the string {gold_answers!r}')
  predicted = normalize_squad(extract_short_answer(generation))
  return float(any(predicted == normalize_squad(gold) for gold in gold_answers))


# ---------------------------------------------------------------------------------------------
# Closed-book facts: normalised whole-word containment.
# ---------------------------------------------------------------------------------------------


def score_contains(
  generation: str, gold_answers: Sequence[str], distractors: Sequence[str] = ()
) -> float:
  """1.0 if some gold alias occurs in the generation (whole words, after ``normalize_fact``)
  and no distractor does, else 0.0."""
  if isinstance(gold_answers, str):
    raise TypeError(f'gold answers must be a list of aliases, got the string {gold_answers!r}')
  if not any(contains_phrase(generation, gold) for gold in gold_answers):
    return 0.0
  return float(not any(contains_phrase(generation, other) for other in distractors))


# ---------------------------------------------------------------------------------------------
# pass@k.
# ---------------------------------------------------------------------------------------------


def pass_at_k(num_samples: int, num_correct: Array, k: int) -> Array:
  """Unbiased pass@k per prompt: ``1 - C(n - c, k) / C(n, k)``.

  Computed as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)`` in log space, which avoids the huge
  binomials; it is exactly 1 when ``n - c < k`` (every size-k subset holds a correct sample).

  Args:
    num_samples: n, samples drawn per prompt (static; the same for every prompt).
    num_correct: c, ``[prompts]`` integer counts of correct samples, ``0 <= c <= n``.
    k: samples allowed per prompt, ``1 <= k <= n`` (static).
  Returns:
    ``[prompts]`` float32 estimates; jit-able with ``num_samples`` and ``k`` static.
  """
  if not 1 <= k <= num_samples:
    raise ValueError(f'pass@k needs 1 <= k <= num_samples, got k={k}, num_samples={num_samples}')
  correct = jnp.asarray(num_correct)
  i = jnp.arange(1, num_samples + 1, dtype=jnp.float32)
  log_terms = jnp.log1p(-k / i)  # -inf where i == k, only reached when n - c < k.
  in_product = i[None, :] > (num_samples - correct[..., None]).astype(jnp.float32)
  log_fail = jnp.sum(jnp.where(in_product, log_terms, 0.0), axis=-1)
  fail = jnp.where(num_samples - correct < k, 0.0, jnp.exp(log_fail))
  return 1.0 - fail


def mean_pass_at_k(correct_matrix: Sequence[Sequence[bool]], k: int) -> float:
  """Mean pass@k over prompts from a ``[prompts, n]`` matrix of per-sample correctness."""
  rows = [list(row) for row in correct_matrix]
  lengths = {len(row) for row in rows}
  if len(lengths) != 1:
    raise ValueError(
      f'every prompt needs the same number of samples, got lengths {sorted(lengths)}'
    )
  num_samples = lengths.pop()
  counts = jnp.asarray([sum(bool(v) for v in row) for row in rows], dtype=jnp.int32)
  return float(jnp.mean(pass_at_k(num_samples, counts, k)))
