"""Scorers: numeric extraction/normalisation, BBH, NQ-open, pass@k vs the closed form."""

import math

import jax
import numpy as np
import pytest

from peft_jax.evals import scorers


@pytest.mark.parametrize(
  'text,expected',
  [
    ('The answer is $1,234.50.', '1,234.50'),
    ('so the result is \\boxed{\\frac{1}{2}} as claimed', '\\frac{1}{2}'),
    ('first \\boxed{3} then \\boxed{\\frac{\\sqrt{2}}{2}}.', '\\frac{\\sqrt{2}}{2}'),
    ('Natalia sold 48 + 24 = 72 clips.\n#### 72', '72'),
    ('#### -7', '-7'),
    ('It fell from -5 to -12.', '-12'),
    ('The answer is 18 dollars.\nDone in 3 steps', '18'),
    ('so x = 3.0 cm', '3.0'),
    ('She ate 1/3 of it', '1/3'),
    ('Thus \\dfrac{3}{4} of them', '3/4'),
    ('no numbers here', None),
  ],
)
def test_extract_numeric_answer(text, expected):
  assert scorers.extract_numeric_answer(text) == expected


@pytest.mark.parametrize(
  'prediction,reference,equal',
  [
    ('3.0', '3', True),
    ('1,000', '1000', True),
    ('$18.00', '18', True),
    ('\\$18', '18', True),
    ('18 dollars', '18', True),
    ('5 cm.', '5', True),
    ('\\text{5 cm}', '5', True),
    ('90^\\circ', '90', True),
    ('2x', '2', False),
    ('2x', '2x', True),
    ('50\\%', '50', True),
    ('-\\frac{1}{2}', '-0.5', True),
    ('\\dfrac{6}{8}', '3/4', True),
    ('\\frac12', '\\frac{1}{2}', True),
    ('x = 5', '5', True),
    ('−4', '-4', True),
    ('-4', '4', False),
    ('0.33', '1/3', False),
    ('1,2', '12', False),
    ('x^2+1', 'x^{2} + 1', True),
    ('\\text{(C)}', '(C)', True),
    ('(1,2)', '(1, 2)', True),
    ('\\left( 3, \\frac{\\pi}{2} \\right)', '(3,\\frac{\\pi}{2})', True),
    ('(1,3)', '(1,2)', False),
    ('\\frac{\\sqrt3}{2}', '\\dfrac{\\sqrt{3}}{2}', True),
    ('10,\\!000', '10000', True),
    ('(-\\infty, 3]', '(-\\infty,3]', True),
  ],
)
def test_numeric_match(prediction, reference, equal):
  assert scorers.numeric_match(prediction, reference) is equal


def test_score_numeric_and_gsm8k_reference():
  reference = scorers.extract_gsm8k_reference('48/2 = <<48/2=24>>24\n#### 1,024')
  assert reference == '1,024'
  assert scorers.score_numeric('so she has 1024 in total.', reference) == 1.0
  assert scorers.score_numeric('\\boxed{1024.0}', '1024') == 1.0
  assert scorers.score_numeric("I think it's 1023", reference) == 0.0
  assert scorers.score_numeric('no idea', reference) == 0.0
  with pytest.raises(ValueError, match="no '####' marker"):
    scorers.extract_gsm8k_reference('just 5')


def test_extract_boxed_nested_and_unbalanced():
  assert scorers.extract_boxed('\\boxed{\\frac{a}{\\sqrt{b}}}') == '\\frac{a}{\\sqrt{b}}'
  assert scorers.extract_boxed('\\boxed 5$') == '5'
  assert scorers.extract_boxed('\\fbox{7}') == '7'
  assert scorers.extract_boxed('\\boxed{unclosed') is None
  assert scorers.extract_boxed('none') is None


@pytest.mark.parametrize(
  'generation,target,score',
  [
    ("Let's think. So the answer is (B).", '(B)', 1.0),
    ('So the answer is (B) sorry, (C).', '(C)', 0.0),
    ('So the answer is B.', '(B)', 1.0),
    ('step 1 ... So the answer is (A)\nQ: next question', '(A)', 1.0),
    ('So the answer is False.', 'False', 1.0),
    ('So the answer is false.', 'False', 0.0),
    ('So the answer is 24.\n\nQ: another', '24', 1.0),
    ('the answer is: valid', 'valid', 1.0),
    ('So the answer is [ ( ) ].', '[ ( ) ]', 1.0),
    ('(A) is my guess', '(A)', 1.0),
  ],
)
def test_score_bbh(generation, target, score):
  assert scorers.score_bbh(generation, target) == score


@pytest.mark.parametrize(
  'generation,golds,score',
  [
    ('The Eiffel Tower!', ['eiffel tower'], 1.0),
    ('Answer: an apple', ['Apple', 'pear'], 1.0),
    ('  \nGeorge   Washington.\nHe was the first.', ['george washington'], 1.0),
    ('Washington', ['George Washington'], 0.0),
    ('the U.S.A.', ['USA'], 1.0),
    ('I think the answer is: Paris.', ['Paris'], 1.0),
    ('ANSWER: Paris', ['paris'], 1.0),
  ],
)
def test_score_nq(generation, golds, score):
  assert scorers.score_nq(generation, golds) == score


def test_normalize_squad_and_nq_type_error():
  assert scorers.normalize_squad("The  Cat's, a THE hat!") == 'cats hat'
  with pytest.raises(TypeError, match='list of aliases'):
    scorers.score_nq('x', 'x')


def _pass_at_k_closed_form(n, c, k):
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_closed_form():
  estimates = np.asarray(scorers.pass_at_k(10, np.array([3]), 1))
  np.testing.assert_allclose(estimates, [0.3], rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(scorers.pass_at_k(10, np.array([3]), 5)), [11 / 12], rtol=1e-6
  )
  counts = np.arange(0, 21)
  jitted = jax.jit(scorers.pass_at_k, static_argnums=(0, 2))
  for k in (1, 2, 5, 10, 17, 20):
    expected = [_pass_at_k_closed_form(20, c, k) for c in counts]
    np.testing.assert_allclose(np.asarray(jitted(20, counts, k)), expected, rtol=2e-6, atol=1e-7)
  # Large n: binomials overflow float64, the product form does not.
  big = np.asarray(scorers.pass_at_k(2000, np.array([1, 10]), 100))
  np.testing.assert_allclose(
    big, [_pass_at_k_closed_form(2000, 1, 100), _pass_at_k_closed_form(2000, 10, 100)], rtol=1e-5
  )
  assert scorers.mean_pass_at_k([[1, 0, 0, 0], [1, 1, 1, 1]], 1) == pytest.approx(0.625)
  with pytest.raises(ValueError, match='1 <= k <= num_samples'):
    scorers.pass_at_k(4, np.array([1]), 5)
