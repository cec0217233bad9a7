"""IFEval: the 25 verifiable-instruction checkers, strict/loose following, and the accuracies.

Definitions follow google-research ``instruction_following_eval`` (docs/METRICS.md, "IFEval"):

* Each prompt ``p`` carries instructions ``I_p`` (official ids such as ``punctuation:no_comma``)
  with keyword arguments. A checker ``check(response, **kwargs) -> bool`` decides whether the
  instruction was followed.
* **Strict**: instruction ``i`` is followed iff ``response.strip()`` is non-empty and the checker
  passes on the raw response.
* **Loose**: followed iff any of 8 variants is non-empty after strip and passes: the response,
  without its first line, without its last line, without both (each of the three stripped), and
  the ``'*'``-removed versions of all four.
* **Prompt-level accuracy** = ``(1/P) sum_p prod_{i in I_p} f_{p,i}``; **instruction-level** =
  ``sum_p sum_i f_{p,i} / sum_p |I_p|`` (a micro-average), each strict and loose.

Offline deviations (documented, both only matter on borderline inputs):

* Sentence counting (``length_constraints:number_sentences``) and word tokenisation
  (``change_case:capital_word_frequency``) use NLTK punkt / ``word_tokenize`` upstream; NLTK's
  punkt model is a separate data download that cannot be fetched here, so
  :func:`count_sentences` and :func:`word_tokenize` are rule-based re-implementations of the
  same behaviour (split after ``. ! ?`` followed by space, except after common abbreviations and
  single-letter initials; contractions split like NLTK's Treebank tokenizer).
* Language identification uses ``langdetect`` (seeded) when it is installed; otherwise
  :func:`detect_language` identifies the language from its script and, for scripts shared by
  several languages, from letters and function words specific to each language. It returns
  ``None`` ("cannot tell") on text without letters, which, like a langdetect exception upstream,
  counts as followed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Any, Callable, Mapping, Optional, Sequence

# ---------------------------------------------------------------------------------------------
# Text utilities (offline stand-ins for NLTK and langdetect).
# ---------------------------------------------------------------------------------------------

_ABBREVIATIONS = frozenset(
  {
    'mr',
    'mrs',
    'ms',
    'dr',
    'prof',
    'sr',
    'jr',
    'st',
    'vs',
    'etc',
    'e.g',
    'i.e',
    'inc',
    'ltd',
    'co',
    'corp',
    'no',
    'fig',
    'approx',
    'dept',
    'est',
    'mt',
    'jan',
    'feb',
    'mar',
    'apr',
    'jun',
    'jul',
    'aug',
    'sep',
    'sept',
    'oct',
    'nov',
    'dec',
    'u.s',
    'u.k',
    'a.m',
    'p.m',
  }
)
_SENTENCE_END_RE = re.compile(r"([.!?]+)([\"'”’)\]]*)(\s+)")


def count_sentences(text: str) -> int:
  """Number of sentences in ``text`` (punkt-like rules).

  A sentence ends at a run of ``. ! ?`` (optionally followed by closing quotes/brackets) that is
  followed by whitespace or the end of the text, unless the period ends a known abbreviation
  (``Mr.``, ``e.g.``, ...) or a single-letter initial. Text after the last terminator counts as
  one more sentence if it contains a letter or digit.
  """
  text = text.strip()
  if not text:
    return 0
  count = 0
  start = 0
  text += ' '  # so that a terminator at the very end is followed by whitespace
  for match in _SENTENCE_END_RE.finditer(text):
    before = text[start : match.start()]
    last_word = before.split()[-1].lower() if before.split() else ''
    if match.group(1) == '.' and (last_word in _ABBREVIATIONS or re.fullmatch(r'[a-z]', last_word)):
      continue
    if re.search(r'\w', before):
      count += 1
    start = match.end()
  if re.search(r'\w', text[start:]):
    count += 1  # an unterminated final sentence
  return count


_WORD_TOKEN_RE = re.compile(
  r"\w+(?=[nN]['’][tT]\b)"  # "do" of "don't" (Treebank splits n't off)
  r"|[nN]['’][tT]\b"  # "n't"
  r"|['’](?:[sSmMdD]|ll|LL|re|RE|ve|VE)\b"  # "'s", "'ll", ... split off like NLTK
  r'|\w+(?:[-.]\w+)*'  # words, hyphenated words, U.S
  r'|[^\w\s]'
)  # each punctuation mark is its own token


def word_tokenize(text: str) -> list[str]:
  """NLTK ``word_tokenize``-like tokens: words, split contractions and punctuation marks."""
  return _WORD_TOKEN_RE.findall(text)


def count_words(text: str) -> int:
  """Number of ``\\w+`` tokens (NLTK ``RegexpTokenizer(r"\\w+")``, as upstream)."""
  return len(re.findall(r'\w+', text))


# Scripts that identify one language, and scripts shared by several (resolved below).
_SCRIPT_RANGES = (
  ('bn', 0x0980, 0x09FF),
  ('pa', 0x0A00, 0x0A7F),
  ('gu', 0x0A80, 0x0AFF),
  ('ta', 0x0B80, 0x0BFF),
  ('te', 0x0C00, 0x0C7F),
  ('kn', 0x0C80, 0x0CFF),
  ('ml', 0x0D00, 0x0D7F),
  ('th', 0x0E00, 0x0E7F),
  ('ko', 0xAC00, 0xD7AF),
  ('ko', 0x1100, 0x11FF),
  ('ja', 0x3040, 0x30FF),
  ('zh', 0x4E00, 0x9FFF),
  ('el', 0x0370, 0x03FF),
  ('he', 0x0590, 0x05FF),
  ('arabic', 0x0600, 0x06FF),
  ('devanagari', 0x0900, 0x097F),
  ('cyrillic', 0x0400, 0x04FF),
  ('latin', 0x0041, 0x024F),
)

# Function words per Latin-script language (the most frequent words of each language).
_LATIN_FUNCTION_WORDS = {
  'en': 'the and of to is in that it was for on are with as be this have you not but'.split(),
  'de': 'der die das und ist nicht ein eine zu den mit sich auf ich es dem des auch'.split(),
  'fr': 'le la les et est un une des du pas que qui dans pour sur au ce il avec'.split(),
  'es': 'el la los las y es un una que de en no por con para del se lo como'.split(),
  'it': 'il lo la gli le e è un una che di non per con del della sono si come'.split(),
  'pt': 'o a os as e é um uma que de não em para com do da se por são'.split(),
  'nl': 'de het een en is van niet dat op te zijn met voor ik je'.split(),
  'fi': 'ja on ei se että oli ovat kuin mutta tai myös hän minä sinä tämä'.split(),
  'vi': 'và là của có không những một các được người trong cho này với'.split(),
  'sw': 'na ya wa ni kwa za la katika hii kuwa yake ambayo sana lakini'.split(),
  'id': 'dan yang di ini itu dengan untuk tidak dari dalam akan ada saya'.split(),
  'tr': 've bir bu da de için ile çok ne değil olarak gibi ben sen'.split(),
  'pl': 'i w nie na się z jest że to do co jak ale po'.split(),
}
_DEVANAGARI_FUNCTION_WORDS = {
  'hi': 'है और के की में से हैं को का यह था नहीं'.split(),
  'mr': 'आहे आणि च्या ची हे या मध्ये आहेत होते नाही'.split(),
  'ne': 'छ र को मा हो यो गर्न पनि छन् थियो'.split(),
}


def _detect_heuristic(text: str) -> Optional[str]:
  counts: collections.Counter = collections.Counter()
  for char in text:
    code = ord(char)
    if not char.isalpha():
      continue
    for name, low, high in _SCRIPT_RANGES:
      if low <= code <= high:
        counts[name] += 1
        break
  if not counts:
    return None
  script = counts.most_common(1)[0][0]
  # Split on spaces and punctuation, not with \w: Indic vowel signs are not \w characters.
  words = [w for w in re.split(r"[\s.,;:!?।॥\"'()\[\]{}«»“”‘’]+", text.lower()) if w]
  if script == 'arabic':
    if re.search('[ےٹڈڑں]', text):
      return 'ur'
    if re.search('[پچژگی]', text) and not re.search('[ةى]', text):
      return 'fa'
    return 'ar'
  if script == 'cyrillic':
    if re.search('[ыэё]', text.lower()):
      return 'ru'
    if re.search('[ґєії]', text.lower()):
      return 'uk'
    return 'bg' if re.search('ъ', text.lower()) else 'ru'
  if script == 'devanagari':
    scores = {
      lang: sum(w in vocab for w in words) for lang, vocab in _DEVANAGARI_FUNCTION_WORDS.items()
    }
    return max(scores, key=lambda lang: (scores[lang], lang == 'hi'))
  if script == 'ja' or (script == 'zh' and counts['ja'] > 0):
    return 'ja'
  if script == 'latin':
    scores = {lang: sum(w in vocab for w in words) for lang, vocab in _LATIN_FUNCTION_WORDS.items()}
    best = max(scores, key=lambda lang: (scores[lang], lang == 'en'))
    return best
  return script


def detect_language(text: str) -> Optional[str]:
  """ISO 639-1 code of ``text``'s language, or ``None`` when it cannot be told.

  Uses ``langdetect`` (seed 0, deterministic) when installed, else the script/function-word
  heuristic described in the module docstring.
  """
  try:
    import langdetect  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _detect_heuristic(text)
  langdetect.DetectorFactory.seed = 0
  try:
    return langdetect.detect(text)
  except langdetect.LangDetectException:
    return None


# ---------------------------------------------------------------------------------------------
# The 25 checkers. Each returns whether ``response`` follows the instruction.
# ---------------------------------------------------------------------------------------------

_RELATIONS = ('less than', 'at least')


def _compare(count: int, relation: str, threshold: int, what: str) -> bool:
  if relation == 'less than':
    return count < threshold
  if relation == 'at least':
    return count >= threshold
  raise ValueError(f'{what}: relation must be one of {_RELATIONS}, got {relation!r}')


def _keywords_existence(response: str, *, keywords: Sequence[str]) -> bool:
  return all(re.search(keyword, response, flags=re.IGNORECASE) for keyword in keywords)


def _keywords_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
  count = len(re.findall(keyword, response, flags=re.IGNORECASE))
  return _compare(count, relation, int(frequency), 'keywords:frequency')


def _keywords_forbidden_words(response: str, *, forbidden_words: Sequence[str]) -> bool:
  return not any(
    re.search(r'\b' + word + r'\b', response, flags=re.IGNORECASE) for word in forbidden_words
  )


def _keywords_letter_frequency(
  response: str, *, letter: str, let_frequency: int, let_relation: str
) -> bool:
  count = collections.Counter(response.lower())[letter.lower()]
  return _compare(count, let_relation, int(let_frequency), 'keywords:letter_frequency')


def _language_response_language(response: str, *, language: str) -> bool:
  detected = detect_language(response)
  return detected is None or detected == language


def _number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
  return _compare(
    count_sentences(response), relation, int(num_sentences), 'length_constraints:number_sentences'
  )


def _number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
  paragraphs = re.split(r'\s?\*\*\*\s?', response)
  count = len(paragraphs)
  for index, paragraph in enumerate(paragraphs):
    if not paragraph.strip():
      if index in (0, len(paragraphs) - 1):
        count -= 1
      else:
        return False  # an empty paragraph between two separators
  return count == int(num_paragraphs)


def _number_words(response: str, *, num_words: int, relation: str) -> bool:
  return _compare(
    count_words(response), relation, int(num_words), 'length_constraints:number_words'
  )


def _nth_paragraph_first_word(
  response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
  paragraphs = re.split(r'\n\n', response)
  count = sum(1 for paragraph in paragraphs if paragraph.strip())
  nth_paragraph = int(nth_paragraph)
  # Upstream indexes the raw split (empty pieces included) after checking against the count.
  if not 1 <= nth_paragraph <= count:
    return False
  paragraph = paragraphs[nth_paragraph - 1].strip()
  if not paragraph:
    return False
  word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
  found = ''
  for char in word:
    if char in {'.', ',', '?', '!', "'", '"'}:
      break
    found += char.lower()
  return count == int(num_paragraphs) and found == first_word.lower()


def _number_placeholders(response: str, *, num_placeholders: int) -> bool:
  return len(re.findall(r'\[.*?\]', response)) >= int(num_placeholders)


def _postscript(response: str, *, postscript_marker: str) -> bool:
  lowered = response.lower()
  if postscript_marker == 'P.P.S':
    pattern = r'\s*p\.\s?p\.\s?s.*$'
  elif postscript_marker == 'P.S.':
    pattern = r'\s*p\.\s?s\..*$'
  else:
    pattern = r'\s*' + postscript_marker.lower() + r'.*$'
  return bool(re.findall(pattern, lowered, flags=re.MULTILINE))


def _number_bullet_lists(response: str, *, num_bullets: int) -> bool:
  stars = re.findall(r'^\s*\*[^\*].*$', response, flags=re.MULTILINE)
  dashes = re.findall(r'^\s*-.*$', response, flags=re.MULTILINE)
  return len(stars) + len(dashes) == int(num_bullets)


_CONSTRAINED_RESPONSES = ('My answer is yes.', 'My answer is no.', 'My answer is maybe.')


def _constrained_response(response: str) -> bool:
  stripped = response.strip()
  return any(option in stripped for option in _CONSTRAINED_RESPONSES)


def _number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
  count = sum(1 for h in re.findall(r'\*[^\n\*]*\*', response) if h.strip('*').strip())
  count += sum(
    1
    for h in re.findall(r'\*\*[^\n\*]*\*\*', response)
    if h.removeprefix('**').removesuffix('**').strip()
  )
  return count >= int(num_highlights)


def _multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
  sections = re.split(r'\s?' + section_spliter + r'\s?\d+\s?', response)
  return len(sections) - 1 >= int(num_sections)


def _json_format(response: str) -> bool:
  value = (
    response.strip()
    .removeprefix('```json')
    .removeprefix('```Json')
    .removeprefix('```JSON')
    .removeprefix('```')
    .removesuffix('```')
    .strip()
  )
  try:
    json.loads(value)
  except ValueError:
    return False
  return True


def _title(response: str) -> bool:
  return any(title.lstrip('<').rstrip('>').strip() for title in re.findall(r'<<[^\n]+>>', response))


def _two_responses(response: str) -> bool:
  pieces = response.split('******')
  valid = []
  for index, piece in enumerate(pieces):
    if not piece.strip():
      if index not in (0, len(pieces) - 1):
        return False
    else:
      valid.append(piece)
  return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
  return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _end_checker(response: str, *, end_phrase: str) -> bool:
  return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _quotation(response: str) -> bool:
  stripped = response.strip()
  return len(stripped) > 1 and stripped[0] == '"' and stripped[-1] == '"'


def _capital_word_frequency(
  response: str, *, capital_frequency: int, capital_relation: str
) -> bool:
  count = sum(1 for word in word_tokenize(response) if word.isupper())
  return _compare(
    count, capital_relation, int(capital_frequency), 'change_case:capital_word_frequency'
  )


def _english_capital(response: str) -> bool:
  detected = detect_language(response)
  return response.isupper() and (detected is None or detected == 'en')


def _english_lowercase(response: str) -> bool:
  detected = detect_language(response)
  return response.islower() and (detected is None or detected == 'en')


def _no_comma(response: str) -> bool:
  return ',' not in response


@dataclasses.dataclass(frozen=True)
class InstructionSpec:
  """One registered instruction: its checker and the kwargs it requires."""

  instruction_id: str
  check: Callable[..., bool]
  kwarg_names: tuple[str, ...]


INSTRUCTIONS: Mapping[str, InstructionSpec] = {
  spec.instruction_id: spec
  for spec in (
    InstructionSpec('keywords:existence', _keywords_existence, ('keywords',)),
    InstructionSpec(
      'keywords:frequency', _keywords_frequency, ('keyword', 'frequency', 'relation')
    ),
    InstructionSpec('keywords:forbidden_words', _keywords_forbidden_words, ('forbidden_words',)),
    InstructionSpec(
      'keywords:letter_frequency',
      _keywords_letter_frequency,
      ('letter', 'let_frequency', 'let_relation'),
    ),
    InstructionSpec('language:response_language', _language_response_language, ('language',)),
    InstructionSpec(
      'length_constraints:number_sentences', _number_sentences, ('num_sentences', 'relation')
    ),
    InstructionSpec(
      'length_constraints:number_paragraphs', _number_paragraphs, ('num_paragraphs',)
    ),
    InstructionSpec('length_constraints:number_words', _number_words, ('num_words', 'relation')),
    InstructionSpec(
      'length_constraints:nth_paragraph_first_word',
      _nth_paragraph_first_word,
      ('num_paragraphs', 'nth_paragraph', 'first_word'),
    ),
    InstructionSpec(
      'detectable_content:number_placeholders', _number_placeholders, ('num_placeholders',)
    ),
    InstructionSpec('detectable_content:postscript', _postscript, ('postscript_marker',)),
    InstructionSpec(
      'detectable_format:number_bullet_lists', _number_bullet_lists, ('num_bullets',)
    ),
    InstructionSpec('detectable_format:constrained_response', _constrained_response, ()),
    InstructionSpec(
      'detectable_format:number_highlighted_sections',
      _number_highlighted_sections,
      ('num_highlights',),
    ),
    InstructionSpec(
      'detectable_format:multiple_sections', _multiple_sections, ('section_spliter', 'num_sections')
    ),
    InstructionSpec('detectable_format:json_format', _json_format, ()),
    InstructionSpec('detectable_format:title', _title, ()),
    InstructionSpec('combination:two_responses', _two_responses, ()),
    InstructionSpec('combination:repeat_prompt', _repeat_prompt, ('prompt_to_repeat',)),
    InstructionSpec('startend:end_checker', _end_checker, ('end_phrase',)),
    InstructionSpec('startend:quotation', _quotation, ()),
    InstructionSpec(
      'change_case:capital_word_frequency',
      _capital_word_frequency,
      ('capital_frequency', 'capital_relation'),
    ),
    InstructionSpec('change_case:english_capital', _english_capital, ()),
    InstructionSpec('change_case:english_lowercase', _english_lowercase, ()),
    InstructionSpec('punctuation:no_comma', _no_comma, ()),
  )
}


def clean_kwargs(instruction_id: str, kwargs: Optional[Mapping[str, Any]]) -> dict[str, Any]:
  """Drops ``None`` entries (the HF export fills every key) and validates against the spec.

  Raises:
    KeyError: for an unknown instruction id, or missing/unknown kwargs (naming the valid ones).
  """
  if instruction_id not in INSTRUCTIONS:
    raise KeyError(
      f'unknown IFEval instruction id {instruction_id!r}; valid ids are: '
      f'{", ".join(sorted(INSTRUCTIONS))}'
    )
  spec = INSTRUCTIONS[instruction_id]
  present = {name: value for name, value in (kwargs or {}).items() if value is not None}
  unknown = sorted(set(present) - set(spec.kwarg_names))
  missing = sorted(set(spec.kwarg_names) - set(present))
  if unknown or missing:
    raise KeyError(
      f'IFEval instruction {instruction_id!r}: unknown kwargs {unknown}, missing '
      f'kwargs {missing}; it takes exactly {list(spec.kwarg_names)}'
    )
  return present


def check_instruction(
  instruction_id: str, response: str, kwargs: Optional[Mapping[str, Any]] = None
) -> bool:
  """Whether the raw ``response`` follows one instruction (the checker alone, no strip rule)."""
  return bool(INSTRUCTIONS[instruction_id].check(response, **clean_kwargs(instruction_id, kwargs)))


def loose_variants(response: str) -> list[str]:
  """The 8 response variants of loose evaluation (upstream order)."""
  lines = response.split('\n')
  remove_first = '\n'.join(lines[1:]).strip()
  remove_last = '\n'.join(lines[:-1]).strip()
  remove_both = '\n'.join(lines[1:-1]).strip()
  variants = [response, remove_first, remove_last, remove_both]
  return (
    variants[:1]
    + [response.replace('*', '')]
    + variants[1:]
    + [v.replace('*', '') for v in variants[1:]]
  )


def follows_strict(
  instruction_id: str, response: str, kwargs: Optional[Mapping[str, Any]] = None
) -> bool:
  """Strict following: non-empty after strip and the checker passes on the raw response."""
  return bool(response.strip()) and check_instruction(instruction_id, response, kwargs)


def follows_loose(
  instruction_id: str, response: str, kwargs: Optional[Mapping[str, Any]] = None
) -> bool:
  """Loose following: some non-empty variant of :func:`loose_variants` passes."""
  return any(
    v.strip() and check_instruction(instruction_id, v, kwargs) for v in loose_variants(response)
  )


def score_ifeval_example(
  response: str,
  instruction_id_list: Sequence[str],
  kwargs_list: Sequence[Optional[Mapping[str, Any]]],
) -> dict[str, Any]:
  """Per-prompt IFEval result.

  Returns:
    ``{'strict': [bool per instruction], 'loose': [...], 'prompt_strict': 0/1,
    'prompt_loose': 0/1, 'num_instructions': |I_p|, 'inst_strict_followed': count,
    'inst_loose_followed': count}``.
  """
  if len(instruction_id_list) != len(kwargs_list):
    raise ValueError(
      f'IFEval example has {len(instruction_id_list)} instruction ids but '
      f'{len(kwargs_list)} kwargs entries; they must pair up'
    )
  strict = [follows_strict(i, response, k) for i, k in zip(instruction_id_list, kwargs_list)]
  loose = [follows_loose(i, response, k) for i, k in zip(instruction_id_list, kwargs_list)]
  return {
    'strict': strict,
    'loose': loose,
    'prompt_strict': float(all(strict)),
    'prompt_loose': float(all(loose)),
    'num_instructions': len(strict),
    'inst_strict_followed': sum(strict),
    'inst_loose_followed': sum(loose),
  }


def ifeval_accuracies(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """The four IFEval accuracies (0-1) from per-prompt results of :func:`score_ifeval_example`.

  ``prompt_level_*`` averages over prompts; ``inst_level_*`` is the micro-average over all
  instructions of all prompts.
  """
  if not results:
    raise ValueError('ifeval_accuracies needs at least one scored prompt')
  num_instructions = sum(r['num_instructions'] for r in results)
  return {
    'prompt_level_strict_acc': sum(r['prompt_strict'] for r in results) / len(results),
    'inst_level_strict_acc': sum(r['inst_strict_followed'] for r in results) / num_instructions,
    'prompt_level_loose_acc': sum(r['prompt_loose'] for r in results) / len(results),
    'inst_level_loose_acc': sum(r['inst_loose_followed'] for r in results) / num_instructions,
  }
