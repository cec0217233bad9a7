"""IFEval-style verifiable instructions over notes about the invented world, with compliant answers.

Each example is a content request ("Write a short note about Kelsa.") plus one primary
instruction and, for some, one secondary instruction, stored with the official IFEval fields:
``key``, ``prompt``, ``instruction_id_list`` and ``kwargs`` (one dict per instruction, official
kwarg names, only the keys the instruction uses). The generator also writes a ``completion`` that
follows every instruction, built programmatically from the subject's fact sentences:

1. the primary instruction shapes the body (bullets, sections, paragraphs, JSON, ...);
2. the secondary appends (``startend:end_checker``) or changes case
   (``change_case:english_lowercase``); ``change_case:english_capital`` upper-cases last;
3. count-type instructions (words, sentences, letters, keyword or capital-word frequencies,
   forbidden words) read their numbers off the final text, so the stated limit always holds.

Secondaries are only paired with primaries they cannot break (see ``_SECONDARY_CONFLICTS``).
"""

from __future__ import annotations

import json
import random
import re
from typing import Callable, Dict, List, Optional, Tuple

from peft_jax.data.suite import world as world_lib

# The official ids this suite uses (24 of the 25; `language:response_language` needs other
# languages, which the tiny world does not have).
PRIMARY_INSTRUCTIONS = (
  'punctuation:no_comma',
  'change_case:english_lowercase',
  'change_case:english_capital',
  'change_case:capital_word_frequency',
  'keywords:existence',
  'keywords:forbidden_words',
  'keywords:frequency',
  'keywords:letter_frequency',
  'length_constraints:number_sentences',
  'length_constraints:number_paragraphs',
  'length_constraints:number_words',
  'length_constraints:nth_paragraph_first_word',
  'detectable_content:number_placeholders',
  'detectable_content:postscript',
  'detectable_format:number_bullet_lists',
  'detectable_format:constrained_response',
  'detectable_format:number_highlighted_sections',
  'detectable_format:multiple_sections',
  'detectable_format:json_format',
  'detectable_format:title',
  'combination:two_responses',
  'combination:repeat_prompt',
  'startend:end_checker',
  'startend:quotation',
)
SECONDARY_INSTRUCTIONS = (
  'punctuation:no_comma',
  'change_case:english_lowercase',
  'startend:end_checker',
)
IFEVAL_INSTRUCTION_IDS = PRIMARY_INSTRUCTIONS

# Primaries a secondary would break (or that already are the secondary).
_SECONDARY_CONFLICTS = {
  'punctuation:no_comma': {'punctuation:no_comma', 'detectable_format:json_format'},
  'change_case:english_lowercase': {
    'change_case:english_lowercase',
    'change_case:english_capital',
    'change_case:capital_word_frequency',
    'detectable_format:multiple_sections',
    'detectable_format:constrained_response',
    # Sentence splitters use capitalisation to find sentence starts.
    'length_constraints:number_sentences',
  },
  'startend:end_checker': {
    'startend:end_checker',
    'detectable_format:json_format',
    'startend:quotation',
  },
}

_REQUESTS = (
  'Write a short note about {s}.',
  'Tell me about {s}.',
  'Describe {s} in a few sentences.',
  'What do you know about {s}?',
)
_KEYWORD_POOL = (
  'lanterns',
  'pebbles',
  'kites',
  'violins',
  'puddles',
  'cherries',
  'ribbons',
  'clouds',
  'candles',
  'shells',
)
_FIRST_WORDS = ('also', 'today', 'indeed', 'now', 'here', 'sometimes')
_END_PHRASES = (
  'Is there anything else I can help with?',
  'Let me know if you have additional questions.',
  'Any other questions?',
)
_PLACEHOLDER_SENTENCES = (
  'Write to them at [address].',
  'Call [phone] to learn more.',
  'Visit on [date].',
)
_POSTSCRIPT_SENTENCES = ('I hope this helps.', 'Thank you for reading.', 'There is more to tell.')
_RELATIONS = ('less than', 'at least')
# Primaries whose answers are long in tokens (upper case splits into short tokens; the others
# repeat text) get 2-sentence notes, keeping prompt + answer within ~128 tokens.
_LONG_ANSWER_PRIMARIES = (
  'change_case:english_capital',
  'combination:two_responses',
  'combination:repeat_prompt',
)
_LOWERCASE_SENTENCE_STARTS = ('The', 'Every', 'People', 'You')

Finalize = Callable[[str], Tuple[str, Dict]]


def _subject_text(fact: world_lib.Fact) -> str:
  return f'the {fact.subject}' if fact.kind == 'animal' else fact.subject


def _note_sentences(
  rng: random.Random, world: world_lib.World, subject: str, max_sentences: int
) -> List[str]:
  """2 to `max_sentences` (<= 4) fact sentences about `subject`, in random order and paraphrase."""
  facts = world.facts_about(subject)
  chosen = rng.sample(facts, rng.randint(2, min(len(facts), max_sentences)))
  if chosen[0].kind == 'person' and len(chosen) < max_sentences and rng.random() < 0.5:
    city = next(f.value for f in facts if f.relation == 'born_in')
    chosen.append(next(f for f in world.facts_about(city) if f.relation == 'country'))
  return [world_lib.fact_sentence(f, rng.randrange(3)) for f in chosen]


def _fixed(instruction: str, kwargs: Optional[Dict] = None) -> Finalize:
  return lambda final_text: (instruction, dict(kwargs or {}))


def _round_limit(count: int, relation: str, step: int = 5) -> int:
  """A round limit that `count` satisfies: the next multiple of `step` above it for
  'less than', the multiple of `step` at or below it for 'at least' (`count` when below `step`)."""
  if relation == 'less than':
    return (count // step + 1) * step
  return count if count < step else (count // step) * step


def _sentence_count(text: str) -> int:
  return len(re.findall(r'[.!?](?=\s|$)', text))


def _capital_word_count(text: str) -> int:
  return sum(1 for word in re.findall(r'\w+', text) if word.isupper())


def _lower_first_word(sentence: str) -> str:
  first, _, rest = sentence.partition(' ')
  return (first.lower() if first in _LOWERCASE_SENTENCE_STARTS else first) + ' ' + rest


def _primary(
  instruction_id: str,
  rng: random.Random,
  request: str,
  subject: str,
  sentences: List[str],
  world: world_lib.World,
) -> Tuple[str, str, Finalize]:
  """Shapes the response for `instruction_id`.

  Returns:
    (request, response, finalize): the request (the constrained-response primary asks a yes/no
    question instead), the shaped response, and a function from the final response text to
    (instruction sentence, kwargs).
  """
  body = ' '.join(sentences)
  if instruction_id == 'punctuation:no_comma':
    return request, body, _fixed('In your entire response, refrain from the use of any commas.')
  if instruction_id == 'change_case:english_lowercase':
    return (
      request,
      body,
      _fixed(
        'Your entire response should be in English, and in all '
        'lowercase letters. No capital letters are allowed.'
      ),
    )
  if instruction_id == 'change_case:english_capital':
    return (
      request,
      body,
      _fixed('Your entire response should be in English, and in all capital letters.'),
    )
  if instruction_id == 'change_case:capital_word_frequency':
    relation = rng.choice(_RELATIONS)
    if relation == 'at least':
      words = body.split(' ')
      candidates = [i for i, w in enumerate(words) if len(w.strip('.?')) >= 3]
      for i in rng.sample(candidates, min(len(candidates), rng.randint(1, 3))):
        words[i] = words[i].upper()
      body = ' '.join(words)

    def finalize(text, relation=relation):
      count = _capital_word_count(text)
      limit = count if relation == 'at least' else count + rng.randint(1, 3)
      return (
        f'In your response, words with all capital letters should appear {relation} {limit} times.',
        {'capital_frequency': limit, 'capital_relation': relation},
      )

    return request, body, finalize
  if instruction_id == 'keywords:existence':
    keywords = rng.sample(_KEYWORD_POOL, rng.randint(1, 2))
    body += f' {_pronoun_subject(subject)} likes ' + ' and '.join(keywords) + '.'
    return (
      request,
      body,
      _fixed(
        f'Include the keywords {", ".join(keywords)} in the response.', {'keywords': keywords}
      ),
    )
  if instruction_id == 'keywords:forbidden_words':

    def finalize(text):
      pool = list(world_lib.JOBS + world_lib.COLOURS + _KEYWORD_POOL)
      absent = [w for w in pool if not re.search(r'\b' + w + r'\b', text, flags=re.IGNORECASE)]
      words = rng.sample(absent, 2)
      return (
        f'Do not include the words {", ".join(words)} in the response.',
        {'forbidden_words': words},
      )

    return request, body, finalize
  if instruction_id == 'keywords:frequency':
    keyword = rng.choice(_KEYWORD_POOL)
    relation = rng.choice(_RELATIONS)
    extra = [
      f'{_pronoun_subject(subject)} likes {keyword}.',
      f'{keyword.capitalize()} are fun.',
      f'Everyone enjoys {keyword}.',
    ]
    body += ' ' + ' '.join(
      extra[: rng.randint(2, 3) if relation == 'at least' else rng.randint(0, 1)]
    )
    body = body.rstrip()

    def finalize(text):
      count = len(re.findall(keyword, text, flags=re.IGNORECASE))
      limit = count if relation == 'at least' else count + rng.randint(1, 2)
      return (
        f'In your response, the word {keyword} should appear {relation} {limit} times.',
        {'keyword': keyword, 'frequency': limit, 'relation': relation},
      )

    return request, body, finalize
  if instruction_id == 'keywords:letter_frequency':
    relation = rng.choice(_RELATIONS)

    def finalize(text):
      lowered = text.lower()
      letter = rng.choice(sorted(set(c for c in lowered if 'a' <= c <= 'z')))
      count = lowered.count(letter)
      limit = (
        max(1, count - rng.randint(0, 2)) if relation == 'at least' else (count + rng.randint(1, 3))
      )
      return (
        f'In your response, the letter {letter} should appear {relation} {limit} times.',
        {'letter': letter, 'let_frequency': limit, 'let_relation': relation},
      )

    return request, body, finalize
  if instruction_id == 'length_constraints:number_sentences':
    relation = rng.choice(_RELATIONS)

    def finalize(text):
      count = _sentence_count(text)
      limit = (
        max(1, count - rng.randint(0, 1)) if relation == 'at least' else (count + rng.randint(1, 2))
      )
      return (
        f'Your response should contain {relation} {limit} sentences.',
        {'num_sentences': limit, 'relation': relation},
      )

    return request, body, finalize
  if instruction_id == 'length_constraints:number_words':
    relation = rng.choice(_RELATIONS)

    def finalize(text):
      limit = _round_limit(len(re.findall(r'\w+', text)), relation)
      return (f'Answer with {relation} {limit} words.', {'num_words': limit, 'relation': relation})

    return request, body, finalize
  if instruction_id == 'length_constraints:number_paragraphs':
    groups = _groups(rng, sentences, rng.randint(2, min(3, len(sentences))))
    return (
      request,
      '\n***\n'.join(' '.join(g) for g in groups),
      _fixed(
        f'There should be {len(groups)} paragraphs. Paragraphs are separated with the markdown '
        'divider: ***',
        {'num_paragraphs': len(groups)},
      ),
    )
  if instruction_id == 'length_constraints:nth_paragraph_first_word':
    groups = _groups(rng, sentences, rng.randint(2, min(3, len(sentences))))
    nth = rng.randint(1, len(groups))
    first_word = rng.choice(_FIRST_WORDS)
    paragraphs = [' '.join(g) for g in groups]
    paragraphs[nth - 1] = first_word.capitalize() + ' ' + _lower_first_word(paragraphs[nth - 1])
    return (
      request,
      '\n\n'.join(paragraphs),
      _fixed(
        f'There should be {len(groups)} paragraphs. Paragraphs are separated with two new lines. '
        f'Paragraph {nth} must start with the word {first_word}.',
        {'num_paragraphs': len(groups), 'nth_paragraph': nth, 'first_word': first_word},
      ),
    )
  if instruction_id == 'detectable_content:number_placeholders':
    count = rng.randint(1, 3)
    body += ' ' + ' '.join(_PLACEHOLDER_SENTENCES[:count])
    return (
      request,
      body,
      _fixed(
        f'The response must contain at least {count} placeholders represented by square '
        'brackets, such as [address].',
        {'num_placeholders': count},
      ),
    )
  if instruction_id == 'detectable_content:postscript':
    marker = rng.choice(('P.S.', 'P.P.S'))
    written = marker if marker.endswith('.') else marker + '.'
    body += f'\n\n{written} {rng.choice(_POSTSCRIPT_SENTENCES)}'
    return (
      request,
      body,
      _fixed(
        f'At the end of your response, please explicitly add a postscript starting with {marker}',
        {'postscript_marker': marker},
      ),
    )
  if instruction_id == 'detectable_format:number_bullet_lists':
    count = rng.randint(2, len(sentences))
    return (
      request,
      '\n'.join(f'* {s}' for s in sentences[:count]),
      _fixed(
        f'Your answer must contain exactly {count} bullet points. Use the markdown bullet points '
        'such as: * This is a point.',
        {'num_bullets': count},
      ),
    )
  if instruction_id == 'detectable_format:constrained_response':
    question, truth = _yes_no_question(rng, world, subject)
    return (
      question,
      f'My answer is {"yes" if truth else "no"}.',
      _fixed(
        'Answer with one of the following options: ("My answer is yes.", "My answer is no.", '
        '"My answer is maybe.")'
      ),
    )
  if instruction_id == 'detectable_format:number_highlighted_sections':
    count = rng.randint(1, min(3, len(sentences)))
    marked = [f'*{s}*' if i < count else s for i, s in enumerate(sentences)]
    return (
      request,
      ' '.join(marked),
      _fixed(
        f'Highlight at least {count} sections in your answer with markdown, i.e. '
        '*highlighted section*.',
        {'num_highlights': count},
      ),
    )
  if instruction_id == 'detectable_format:multiple_sections':
    splitter = rng.choice(('Section', 'SECTION', 'Part'))
    groups = _groups(rng, sentences, rng.randint(2, min(3, len(sentences))))
    return (
      request,
      '\n\n'.join(f'{splitter} {i + 1}\n' + ' '.join(g) for i, g in enumerate(groups)),
      _fixed(
        f'Your response must have {len(groups)} sections. Mark the beginning of each section '
        f'with {splitter} X, such as: {splitter} 1',
        {'section_spliter': splitter, 'num_sections': len(groups)},
      ),
    )
  if instruction_id == 'detectable_format:json_format':
    record = {'name': subject}
    record.update({f.relation: f.value for f in world.facts_about(subject)})
    return request, json.dumps(record), _fixed('Entire output should be wrapped in JSON format.')
  if instruction_id == 'detectable_format:title':
    title = f'About {_subject_title(subject)}'
    return (
      request,
      f'<<{title}>>\n{body}',
      _fixed(
        'Your answer must contain a title, wrapped in double angular brackets, such as '
        '<<poem of joy>>.'
      ),
    )
  if instruction_id == 'combination:two_responses':
    second = ' '.join(reversed(sentences)) if len(sentences) > 1 else sentences[0] + ' That is all.'
    return (
      request,
      f'{body}\n******\n{second}',
      _fixed(
        'Give two different responses. Responses and only responses should be separated by 6 '
        'asterisk symbols: ******.'
      ),
    )
  if instruction_id == 'combination:repeat_prompt':
    return (
      request,
      f'{request}\n{body}',
      _fixed(
        'First repeat the request word for word without change, then give your answer (do not '
        'say anything before repeating the request; the request you need to repeat does not '
        'include this sentence)',
        {'prompt_to_repeat': request},
      ),
    )
  if instruction_id == 'startend:end_checker':
    phrase = rng.choice(_END_PHRASES)
    return (
      request,
      f'{body} {phrase}',
      _fixed(
        f'Finish your response with this exact phrase {phrase}. No other words should follow '
        'this phrase.',
        {'end_phrase': phrase},
      ),
    )
  if instruction_id == 'startend:quotation':
    return request, f'"{body}"', _fixed('Wrap your entire response with double quotation marks.')
  raise ValueError(f'unknown instruction id {instruction_id!r}; valid: {PRIMARY_INSTRUCTIONS}')


def _pronoun_subject(subject: str) -> str:
  return subject if subject[0].isupper() else f'The {subject}'


def _subject_title(subject: str) -> str:
  return subject if subject[0].isupper() else f'The {subject.capitalize()}'


def _groups(rng: random.Random, sentences: List[str], count: int) -> List[List[str]]:
  """Splits `sentences` into `count` non-empty consecutive groups."""
  cuts = sorted(rng.sample(range(1, len(sentences)), count - 1))
  bounds = [0] + cuts + [len(sentences)]
  return [sentences[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _yes_no_question(rng: random.Random, world: world_lib.World, subject: str) -> Tuple[str, bool]:
  """A yes/no question about one fact of `subject`, true or false with equal odds."""
  fact = rng.choice(world.facts_about(subject))
  pools = {
    'born_in': world.cities,
    'job': world_lib.JOBS,
    'colour': world_lib.COLOURS,
    'country': world.countries,
    'famous_for': world_lib.CITY_FEATURES,
    'class': world_lib.ANIMAL_CLASSES,
    'food': world_lib.ANIMAL_FOODS,
    'habitat': world_lib.HABITATS,
  }
  if fact.relation == 'river':
    fact = next(f for f in world.facts_about(subject) if f.relation == 'country')
  truth = rng.random() < 0.5
  value = fact.value if truth else rng.choice([v for v in pools[fact.relation] if v != fact.value])
  templates = {
    'born_in': 'Was {s} born in {v}?',
    'job': 'Does {s} work as a {v}?',
    'colour': 'Is the favourite colour of {s} {v}?',
    'country': 'Is {s} a city in {v}?',
    'famous_for': 'Is {s} famous for its {v}?',
    'class': 'Is the {s} a kind of {v}?',
    'food': 'Does the {s} eat {v}?',
    'habitat': 'Does the {s} live in the {v}?',
  }
  return templates[fact.relation].format(s=fact.subject, v=value), truth


def make_example(rng: random.Random, world: world_lib.World) -> Dict:
  """One IFEval example with its compliant completion.

  Returns:
    {'prompt', 'instruction_id_list', 'kwargs', 'completion', 'split_key'}: the caller adds
    'key'; 'split_key' (the request and the primary instruction) is what train and test must not
    share, so that no test prompt is also the start of a training prompt.
  """
  subject = rng.choice(world.people + world.cities + world.animals)
  subject_text = subject if subject[0].isupper() else f'the {subject}'
  request = rng.choice(_REQUESTS).format(s=subject_text)
  primary = rng.choice(PRIMARY_INSTRUCTIONS)
  max_sentences = 2 if primary in _LONG_ANSWER_PRIMARIES else 4
  sentences = _note_sentences(rng, world, subject, max_sentences)
  request, response, finalize_primary = _primary(primary, rng, request, subject, sentences, world)
  secondary = None
  if rng.random() < 0.4:
    allowed = [s for s in SECONDARY_INSTRUCTIONS if primary not in _SECONDARY_CONFLICTS[s]]
    secondary = rng.choice(allowed)
  secondary_instruction, secondary_kwargs = None, {}
  if secondary == 'startend:end_checker':
    phrase = rng.choice(_END_PHRASES)
    response = f'{response} {phrase}'
    secondary_instruction = (
      f'Finish your response with this exact phrase {phrase}. No other '
      'words should follow this phrase.'
    )
    secondary_kwargs = {'end_phrase': phrase}
  elif secondary == 'punctuation:no_comma':
    secondary_instruction = 'In your entire response, refrain from the use of any commas.'
  elif secondary == 'change_case:english_lowercase':
    secondary_instruction = (
      'Your entire response should be in English, and in all lowercase '
      'letters. No capital letters are allowed.'
    )
  if primary == 'change_case:english_capital':
    response = response.upper()
  if 'change_case:english_lowercase' in (primary, secondary):
    response = response.lower()
  primary_instruction, primary_kwargs = finalize_primary(response)
  instructions = [primary_instruction] + ([secondary_instruction] if secondary else [])
  if primary == 'combination:repeat_prompt':
    # The repeat instruction comes last, as in the official prompts.
    instructions = instructions[1:] + instructions[:1]
  ids = [primary] + ([secondary] if secondary else [])
  kwargs = [primary_kwargs] + ([secondary_kwargs] if secondary else [])
  return {
    'prompt': request + ' ' + ' '.join(instructions),
    'instruction_id_list': ids,
    'kwargs': kwargs,
    'completion': response,
    'split_key': request + ' ' + primary_instruction,
  }
