"""A small invented world of people, cities and animals, its facts, and NQ-open questions on them.

Every name is built from syllables by a seeded generator, so no pretrained model knows any fact
beforehand: a model can answer the questions only if it read the fact sentences during
pretraining. Each fact is a triple ``(subject, relation, value)``; it is written out in several
paraphrased declarative sentences (for the pretraining corpus) and asked by one NQ-style question
(lowercase, no question mark, like NQ-open) whose answer list holds the value and its aliases.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Dict, List, Sequence, Tuple

_ONSETS = (
  'b',
  'd',
  'f',
  'g',
  'k',
  'l',
  'm',
  'n',
  'p',
  'r',
  's',
  't',
  'v',
  'z',
  'br',
  'dr',
  'kr',
  'st',
  'tr',
  'sh',
)
_VOWELS = ('a', 'e', 'i', 'o', 'u', 'ai', 'oa')
_CODAS = ('', '', '', 'n', 'l', 'r', 's', 'm')

# Generated names avoid short common words of several languages, so a name never reads as a
# function word (which would confuse language identification of the IFEval answers).
_COMMON_WORDS = frozenset(
  'para sono sana kuwa yang dari dalam akan saya mutta della dengan untuk tidak olarak gibi '
  'nicht eine sich auch dans pour avec sobre como pero todo esta este bien that this with have '
  'from were been they them then than what when tala kila sasa tena pero onde mais muito '
  'mina sina taas vain kanssa nous vous sont etre'.split()
)

JOBS = (
  'baker',
  'farmer',
  'teacher',
  'painter',
  'doctor',
  'sailor',
  'singer',
  'builder',
  'writer',
  'tailor',
  'miner',
  'pilot',
)
COLOURS = ('red', 'blue', 'green', 'yellow', 'white', 'black', 'orange', 'purple', 'brown', 'grey')
CITY_FEATURES = (
  'bridges',
  'gardens',
  'markets',
  'towers',
  'music',
  'boats',
  'lamps',
  'cheese',
  'glass',
  'horses',
)
ANIMAL_CLASSES = ('bird', 'fish', 'insect', 'snake', 'frog', 'mammal', 'lizard')
ANIMAL_FOODS = (
  'seeds',
  'leaves',
  'fruit',
  'grass',
  'worms',
  'roots',
  'berries',
  'nuts',
  'mice',
  'honey',
)
HABITATS = ('forest', 'desert', 'lake', 'mountains', 'swamp', 'river', 'grassland', 'caves', 'sea')


def _syllable(rng: random.Random) -> str:
  return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _unique_names(
  rng: random.Random, count: int, syllables: Tuple[int, int], taken: set
) -> List[str]:
  """`count` new capitalised names of `syllables` (min, max) syllables, none in `taken`."""
  names = []
  attempts = 0
  while len(names) < count:
    attempts += 1
    if attempts > 1000 * (count + 1):
      raise ValueError(f'could not draw {count} unique names; lower the entity counts in sizes')
    name = ''.join(_syllable(rng) for _ in range(rng.randint(*syllables))).capitalize()
    if name not in taken and 4 <= len(name) <= 9 and name.lower() not in _COMMON_WORDS:
      taken.add(name)
      names.append(name)
  return names


@dataclasses.dataclass(frozen=True)
class Fact:
  """One triple of the world.

  Attributes:
    subject: the entity's name as written in text ('Tavo Mirel', 'Kelsa', 'the zorp').
    kind: 'person', 'city' or 'animal'.
    relation: one of RELATIONS[kind].
    value: the attribute value ('Kelsa', 'baker').
  """

  subject: str
  kind: str
  relation: str
  value: str


RELATIONS = {
  'person': ('born_in', 'job', 'colour'),
  'city': ('country', 'river', 'famous_for'),
  'animal': ('class', 'food', 'habitat'),
}

# Paraphrases of each relation for the pretraining text. No commas, no abbreviations and no
# leading one-letter words, so the IFEval transformations built on them stay checkable.
_FACT_TEMPLATES = {
  'born_in': ('{s} was born in {v}.', 'The home town of {s} is {v}.', '{s} grew up in {v}.'),
  'job': (
    '{s} works as the local {v}.',
    'The job of {s} is {v}.',
    'The work of {s} is that of a {v}.',
  ),
  'colour': (
    'The favourite colour of {s} is {v}.',
    '{s} likes the colour {v} best.',
    '{s} loves the colour {v}.',
  ),
  'country': ('{s} is a city in {v}.', 'The city of {s} lies in {v}.', '{s} belongs to {v}.'),
  'river': (
    'The river {v} flows through {s}.',
    '{s} stands on the river {v}.',
    'The {v} river runs through {s}.',
  ),
  'famous_for': (
    '{s} is famous for its {v}.',
    'People visit {s} for its {v}.',
    'The {v} of {s} are well known.',
  ),
  'class': (
    'The {s} is a kind of {v}.',
    'Every {s} is a {v}.',
    'The {s} belongs to the {v} family.',
  ),
  'food': ('The {s} eats {v}.', 'The food of the {s} is {v}.', 'The {s} feeds on {v}.'),
  'habitat': (
    'The {s} lives in the {v}.',
    'The home of the {s} is the {v}.',
    'You can find the {s} in the {v}.',
  ),
}

_QUESTIONS = {
  'born_in': 'where was {s} born',
  'job': 'what is the job of {s}',
  'colour': 'what is the favourite colour of {s}',
  'country': 'which country is {s} in',
  'river': 'which river flows through {s}',
  'famous_for': 'what is {s} famous for',
  'class': 'what kind of animal is the {s}',
  'food': 'what does the {s} eat',
  'habitat': 'where does the {s} live',
}


@dataclasses.dataclass(frozen=True)
class World:
  """The entities and their facts.

  Attributes:
    people: full names ('Tavo Mirel').
    cities: city names.
    countries: country names.
    animals: animal names, lowercase ('zorp').
    facts: every fact, in a fixed order.
  """

  people: Tuple[str, ...]
  cities: Tuple[str, ...]
  countries: Tuple[str, ...]
  animals: Tuple[str, ...]
  facts: Tuple[Fact, ...]

  def facts_about(self, subject: str) -> List[Fact]:
    """The facts whose subject is `subject` (a person, city, or animal name)."""
    found = [f for f in self.facts if f.subject == subject]
    if not found:
      raise KeyError(
        f'no facts about {subject!r}; subjects are people, cities and animals of '
        f'the world, e.g. {self.people[:3]}, {self.cities[:3]}, {self.animals[:3]}'
      )
    return found


def build_world(
  rng: random.Random, *, num_people: int, num_cities: int, num_animals: int, num_countries: int = 6
) -> World:
  """Draws a world: names, then every entity's attributes, uniformly at random."""
  for key, value in (
    ('num_people', num_people),
    ('num_cities', num_cities),
    ('num_animals', num_animals),
    ('num_countries', num_countries),
  ):
    if value < 1:
      raise ValueError(f'{key} must be >= 1, got {value}')
  taken: set = set()
  countries = _unique_names(rng, num_countries, (2, 3), taken)
  cities = _unique_names(rng, num_cities, (2, 2), taken)
  rivers = _unique_names(rng, max(3, num_cities // 2), (1, 2), taken)
  animals = [a.lower() for a in _unique_names(rng, num_animals, (1, 2), taken)]
  first = _unique_names(rng, num_people, (1, 2), taken)
  last = _unique_names(rng, num_people, (2, 2), taken)
  people = [f'{a} {b}' for a, b in zip(first, last)]
  facts = []
  for person in people:
    facts.append(Fact(person, 'person', 'born_in', rng.choice(cities)))
    facts.append(Fact(person, 'person', 'job', rng.choice(JOBS)))
    facts.append(Fact(person, 'person', 'colour', rng.choice(COLOURS)))
  for city in cities:
    facts.append(Fact(city, 'city', 'country', rng.choice(countries)))
    facts.append(Fact(city, 'city', 'river', rng.choice(rivers)))
    facts.append(Fact(city, 'city', 'famous_for', rng.choice(CITY_FEATURES)))
  for animal in animals:
    facts.append(Fact(animal, 'animal', 'class', rng.choice(ANIMAL_CLASSES)))
    facts.append(Fact(animal, 'animal', 'food', rng.choice(ANIMAL_FOODS)))
    facts.append(Fact(animal, 'animal', 'habitat', rng.choice(HABITATS)))
  return World(tuple(people), tuple(cities), tuple(countries), tuple(animals), tuple(facts))


def fact_sentence(fact: Fact, variant: int = 0) -> str:
  """Declarative sentence number `variant` (mod the number of paraphrases) stating `fact`."""
  templates = _FACT_TEMPLATES[fact.relation]
  text = templates[variant % len(templates)].format(s=fact.subject, v=fact.value)
  return text[0].upper() + text[1:]


def nq_question(fact: Fact) -> str:
  """NQ-open style question (lowercase words, no question mark) whose answer is `fact.value`."""
  return _QUESTIONS[fact.relation].format(s=fact.subject)


def nq_answers(fact: Fact, world: World) -> List[str]:
  """The accepted answers for `fact`: the value first, then aliases."""
  value = fact.value
  if fact.relation == 'born_in':
    country = next(f.value for f in world.facts_about(value) if f.relation == 'country')
    return [value, f'{value} in {country}', f'the city of {value}']
  if fact.relation in ('job', 'class'):
    return [value, f'a {value}']
  if fact.relation == 'river':
    return [value, f'the {value} river', f'the river {value}']
  if fact.relation in ('habitat',):
    return [value, f'the {value}', f'in the {value}']
  if fact.relation == 'famous_for':
    return [value, f'its {value}']
  return [value]


def split_facts(
  facts: Sequence[Fact], rng: random.Random, test_fraction: float
) -> Tuple[List[Fact], List[Fact]]:
  """Splits facts into (train, test) question sets; every fact stays in the pretraining text."""
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'nq_test_fraction must be in (0, 1), got {test_fraction}')
  order = list(range(len(facts)))
  rng.shuffle(order)
  num_test = max(1, int(round(test_fraction * len(facts))))
  test_ids = set(order[:num_test])
  train = [f for i, f in enumerate(facts) if i not in test_ids]
  test = [f for i, f in enumerate(facts) if i in test_ids]
  return train, test


def fact_documents(world: World, rng: random.Random, docs_per_entity: int) -> List[str]:
  """Pretraining documents: for each entity, `docs_per_entity` short paraphrased biographies.

  Each document states all facts of one entity in a shuffled order with rotating paraphrases, so
  the model sees each fact in several surface forms (which helps later question answering).
  """
  by_subject: Dict[str, List[Fact]] = {}
  for fact in world.facts:
    by_subject.setdefault(fact.subject, []).append(fact)
  documents = []
  for subject, facts in by_subject.items():
    for doc_index in range(docs_per_entity):
      order = list(facts)
      rng.shuffle(order)
      documents.append(' '.join(fact_sentence(f, doc_index + rng.randrange(3)) for f in order))
  rng.shuffle(documents)
  return documents
