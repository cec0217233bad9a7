"""IFEval checkers: a hand-written table per instruction type, strict/loose, and accuracies."""

import pytest

from peft_jax.evals import ifeval

ENDING = 'Is there anything else I can help with?'

# (instruction id, kwargs, response, expected strict, expected loose).
CASES = [
  ('keywords:existence', {'keywords': ['apple', 'banana']}, 'I like Apple and banana.', True, True),
  ('keywords:existence', {'keywords': ['apple', 'banana']}, 'Only apple here.', False, False),
  ('keywords:existence', {'keywords': ['apple', 'banana']}, '**ap*ple** and banana', False, True),
  (
    'keywords:frequency',
    {'keyword': 'cat', 'frequency': 3, 'relation': 'at least'},
    'cat Cat CAT',
    True,
    True,
  ),
  (
    'keywords:frequency',
    {'keyword': 'cat', 'frequency': 3, 'relation': 'at least'},
    'one cat',
    False,
    False,
  ),
  (
    'keywords:frequency',
    {'keyword': 'sure', 'frequency': 1, 'relation': 'less than'},
    'Sure!\nThe answer is 4.',
    False,
    True,
  ),
  ('keywords:forbidden_words', {'forbidden_words': ['bad']}, 'Good: badminton is fun.', True, True),
  ('keywords:forbidden_words', {'forbidden_words': ['bad']}, 'That is BAD.', False, False),
  (
    'keywords:forbidden_words',
    {'forbidden_words': ['bad']},
    'Not bad, intro:\nA fine answer.',
    False,
    True,
  ),
  (
    'keywords:letter_frequency',
    {'letter': 'z', 'let_frequency': 2, 'let_relation': 'at least'},
    'Zoo fizz',
    True,
    True,
  ),
  (
    'keywords:letter_frequency',
    {'letter': 'z', 'let_frequency': 2, 'let_relation': 'at least'},
    'zero',
    False,
    False,
  ),
  (
    'keywords:letter_frequency',
    {'letter': 'a', 'let_frequency': 2, 'let_relation': 'less than'},
    'Banana:\nHi there.',
    False,
    True,
  ),
  (
    'language:response_language',
    {'language': 'en'},
    'The dog is in the house and it is happy with the food.',
    True,
    True,
  ),
  (
    'language:response_language',
    {'language': 'en'},
    'Der Hund ist nicht in dem Haus und das ist auch gut so.',
    False,
    False,
  ),
  (
    'language:response_language',
    {'language': 'ru'},
    'Это очень хорошая собака, и мы её любим.',
    True,
    True,
  ),
  (
    'length_constraints:number_sentences',
    {'num_sentences': 3, 'relation': 'less than'},
    'One. Two.',
    True,
    True,
  ),
  (
    'length_constraints:number_sentences',
    {'num_sentences': 3, 'relation': 'less than'},
    'One. Two. Three.',
    False,
    False,
  ),
  (
    'length_constraints:number_sentences',
    {'num_sentences': 3, 'relation': 'less than'},
    'Here is my answer. It is short. Really.\nYes it is.',
    False,
    True,
  ),
  (
    'length_constraints:number_paragraphs',
    {'num_paragraphs': 2},
    'First para.\n***\nSecond.',
    True,
    True,
  ),
  ('length_constraints:number_paragraphs', {'num_paragraphs': 2}, 'A\n***\n***\nB', False, False),
  (
    'length_constraints:number_paragraphs',
    {'num_paragraphs': 2},
    'Title ***\nP1\n***\nP2',
    False,
    True,
  ),
  (
    'length_constraints:number_words',
    {'num_words': 5, 'relation': 'at least'},
    'one two three four five',
    True,
    True,
  ),
  (
    'length_constraints:number_words',
    {'num_words': 5, 'relation': 'at least'},
    'too short',
    False,
    False,
  ),
  (
    'length_constraints:number_words',
    {'num_words': 4, 'relation': 'less than'},
    'Here is the answer below\nYes.',
    False,
    True,
  ),
  (
    'length_constraints:nth_paragraph_first_word',
    {'num_paragraphs': 2, 'nth_paragraph': 2, 'first_word': 'second'},
    'First paragraph.\n\n"Second, it ends."',
    True,
    True,
  ),
  (
    'length_constraints:nth_paragraph_first_word',
    {'num_paragraphs': 2, 'nth_paragraph': 2, 'first_word': 'second'},
    'First.\n\nThird paragraph.',
    False,
    False,
  ),
  (
    'length_constraints:nth_paragraph_first_word',
    {'num_paragraphs': 2, 'nth_paragraph': 2, 'first_word': 'second'},
    'Intro\n\nFirst.\n\nSecond one.',
    False,
    True,
  ),
  (
    'detectable_content:number_placeholders',
    {'num_placeholders': 2},
    '[name] at [address]',
    True,
    True,
  ),
  ('detectable_content:number_placeholders', {'num_placeholders': 2}, '[name] only', False, False),
  ('detectable_content:number_placeholders', {'num_placeholders': 2}, '', False, False),
  ('detectable_content:postscript', {'postscript_marker': 'P.S.'}, 'Hello.\nP.S. bye', True, True),
  ('detectable_content:postscript', {'postscript_marker': 'P.S.'}, 'Hello. PS bye', False, False),
  (
    'detectable_content:postscript',
    {'postscript_marker': 'P.S.'},
    'Hello.\n*P.*S. bye',
    False,
    True,
  ),
  ('detectable_content:postscript', {'postscript_marker': 'P.P.S'}, 'Hi\nP.P.S. more', True, True),
  ('detectable_format:number_bullet_lists', {'num_bullets': 2}, '* a\n* b', True, True),
  (
    'detectable_format:number_bullet_lists',
    {'num_bullets': 2},
    '* a\n* b\n* c\n* d\n* e',
    False,
    False,
  ),
  (
    'detectable_format:number_bullet_lists',
    {'num_bullets': 2},
    '- intro line\n* a\n- b',
    False,
    True,
  ),
  ('detectable_format:constrained_response', {}, 'My answer is yes.', True, True),
  ('detectable_format:constrained_response', {}, 'Yes.', False, False),
  ('detectable_format:constrained_response', {}, 'My answer is *yes*.', False, True),
  (
    'detectable_format:number_highlighted_sections',
    {'num_highlights': 2},
    '*one* and **two**',
    True,
    True,
  ),
  (
    'detectable_format:number_highlighted_sections',
    {'num_highlights': 2},
    '*one* and ** **',
    False,
    False,
  ),
  ('detectable_format:number_highlighted_sections', {'num_highlights': 2}, 'plain', False, False),
  (
    'detectable_format:multiple_sections',
    {'section_spliter': 'Section', 'num_sections': 2},
    'Section 1\nfoo\nSection 2\nbar',
    True,
    True,
  ),
  (
    'detectable_format:multiple_sections',
    {'section_spliter': 'Section', 'num_sections': 2},
    'Section 1 only',
    False,
    False,
  ),
  (
    'detectable_format:multiple_sections',
    {'section_spliter': 'Section', 'num_sections': 2},
    'Section 1 x\n**Section** 2\nbar',
    False,
    True,
  ),
  ('detectable_format:json_format', {}, '```json\n{"a": 1}\n```', True, True),
  ('detectable_format:json_format', {}, '{a: 1}', False, False),
  ('detectable_format:json_format', {}, 'Here is JSON:\n{"a": 1}', False, True),
  ('detectable_format:title', {}, '<<My Title>>\nbody', True, True),
  ('detectable_format:title', {}, '<< >>\nbody', False, False),
  ('detectable_format:title', {}, '<<\nTitle>>', False, False),
  ('combination:two_responses', {}, 'Answer one.\n******\nAnswer two.', True, True),
  ('combination:two_responses', {}, 'Same.\n******\nSame.', False, False),
  ('combination:two_responses', {}, 'Intro\n******\nA\n******\nB', False, True),
  (
    'combination:repeat_prompt',
    {'prompt_to_repeat': 'Write a poem.'},
    'Write a poem. Roses are red.',
    True,
    True,
  ),
  (
    'combination:repeat_prompt',
    {'prompt_to_repeat': 'Write a poem.'},
    'Here: Write a poem.',
    False,
    False,
  ),
  (
    'combination:repeat_prompt',
    {'prompt_to_repeat': 'Write a poem.'},
    'Sure.\nwrite a poem. ok',
    False,
    True,
  ),
  ('startend:end_checker', {'end_phrase': ENDING}, f'Done. "{ENDING}"', True, True),
  ('startend:end_checker', {'end_phrase': ENDING}, 'Done. Bye.', False, False),
  ('startend:end_checker', {'end_phrase': ENDING}, f'Done. {ENDING}\n-- signed', False, True),
  ('startend:quotation', {}, '"Hello there"', True, True),
  ('startend:quotation', {}, 'Hello', False, False),
  ('startend:quotation', {}, 'Here you go:\n"Hello"', False, True),
  (
    'change_case:capital_word_frequency',
    {'capital_frequency': 2, 'capital_relation': 'at least'},
    'THIS is VERY good',
    True,
    True,
  ),
  (
    'change_case:capital_word_frequency',
    {'capital_frequency': 2, 'capital_relation': 'at least'},
    'This is Good',
    False,
    False,
  ),
  (
    'change_case:capital_word_frequency',
    {'capital_frequency': 2, 'capital_relation': 'less than'},
    'NOTE WELL THIS\nthe answer is YES',
    False,
    True,
  ),
  (
    'change_case:english_capital',
    {},
    'THE DOG IS IN THE HOUSE AND IT IS HAPPY WITH THE FOOD.',
    True,
    True,
  ),
  (
    'change_case:english_capital',
    {},
    'The dog is in the house and it is happy with the food.',
    False,
    False,
  ),
  (
    'change_case:english_capital',
    {},
    'Sure, here it is:\nTHE DOG IS IN THE HOUSE AND IT IS HAPPY WITH THE FOOD.',
    False,
    True,
  ),
  (
    'change_case:english_lowercase',
    {},
    'the dog is in the house and it is happy with the food.',
    True,
    True,
  ),
  (
    'change_case:english_lowercase',
    {},
    'The dog is in the house and it is happy with the food.',
    False,
    False,
  ),
  (
    'change_case:english_lowercase',
    {},
    'Sure, here it is:\nthe dog is in the house and it is happy with the food.',
    False,
    True,
  ),
  ('punctuation:no_comma', {}, 'No commas here.', True, True),
  ('punctuation:no_comma', {}, 'Yes, commas.', False, False),
  ('punctuation:no_comma', {}, 'Well, here:\nNo commas here.', False, True),
  # Whitespace-only responses never count, even where the checker alone would pass.
  ('punctuation:no_comma', {}, '   \n ', False, False),
]


@pytest.mark.parametrize('instruction_id,kwargs,response,strict,loose', CASES)
def test_checker_table(instruction_id, kwargs, response, strict, loose):
  assert ifeval.follows_strict(instruction_id, response, kwargs) is strict
  assert ifeval.follows_loose(instruction_id, response, kwargs) is loose


def test_table_covers_all_25_registered_ids():
  assert len(ifeval.INSTRUCTIONS) == 25
  assert {case[0] for case in CASES} == set(ifeval.INSTRUCTIONS)
  for instruction_id in ifeval.INSTRUCTIONS:
    rows = [case for case in CASES if case[0] == instruction_id]
    assert len(rows) >= 3, instruction_id
    assert any(r[3] for r in rows) and any(not r[4] for r in rows), instruction_id


def test_loose_variants_match_upstream_order():
  variants = ifeval.loose_variants('a*\nb\nc*')
  assert variants == ['a*\nb\nc*', 'a\nb\nc', 'b\nc*', 'a*\nb', 'b', 'b\nc', 'a\nb', 'b']


def test_text_utilities():
  assert ifeval.count_sentences('Mr. Smith went home. He slept! Did he? Yes') == 4
  assert ifeval.count_sentences('J. R. Tolkien wrote books. e.g. this one.') == 2
  assert ifeval.count_sentences('') == 0
  assert ifeval.word_tokenize("DON'T stop, IT'S fine.") == [
    'DO',
    "N'T",
    'stop',
    ',',
    'IT',
    "'S",
    'fine',
    '.',
  ]
  assert ifeval.count_words("it's a well-known fact") == 6
  assert ifeval.detect_language('Это очень хорошая собака.') == 'ru'
  assert ifeval.detect_language('यह एक अच्छा कुत्ता है और वह खुश है।') == 'hi'
  assert ifeval.detect_language('این یک سگ خوب است و ما او را دوست داریم. چرا؟') == 'fa'
  assert ifeval.detect_language('12345 !!!') is None


def test_kwargs_validation_drops_none_and_names_bad_keys():
  kwargs = {'num_words': 3, 'relation': 'at least', 'keyword': None, 'language': None}
  assert ifeval.clean_kwargs('length_constraints:number_words', kwargs) == {
    'num_words': 3,
    'relation': 'at least',
  }
  with pytest.raises(KeyError, match="unknown kwargs \\['keyword'\\]"):
    ifeval.clean_kwargs(
      'length_constraints:number_words', {'num_words': 3, 'relation': 'at least', 'keyword': 'x'}
    )
  with pytest.raises(KeyError, match="missing kwargs \\['relation'\\]"):
    ifeval.clean_kwargs('length_constraints:number_words', {'num_words': 3})
  with pytest.raises(KeyError, match="unknown IFEval instruction id 'punctuation:no_commas'"):
    ifeval.clean_kwargs('punctuation:no_commas', {})
  with pytest.raises(ValueError, match='relation must be one of'):
    ifeval.check_instruction(
      'length_constraints:number_words', 'a b', {'num_words': 3, 'relation': 'more than'}
    )


def test_accuracies_prompt_and_instruction_level():
  # Prompt 1: 2 instructions, strict 0/2, loose 2/2. Prompt 2: 1 instruction, followed.
  first = ifeval.score_ifeval_example(
    'Sure, here:\nthere are no commas in the text and it is fine',
    ['punctuation:no_comma', 'change_case:english_lowercase'],
    [{}, {}],
  )
  second = ifeval.score_ifeval_example(
    '[a] [b]', ['detectable_content:number_placeholders'], [{'num_placeholders': 2}]
  )
  assert first['strict'] == [False, False] and first['loose'] == [True, True]
  accuracies = ifeval.ifeval_accuracies([first, second])
  assert accuracies == {
    'prompt_level_strict_acc': 0.5,
    'inst_level_strict_acc': 1 / 3,
    'prompt_level_loose_acc': 1.0,
    'inst_level_loose_acc': 1.0,
  }


# One sentence per language IFEval's language:response_language uses (its 30 codes).
LANGUAGE_SAMPLES = {
  'en': 'The dog is in the house and does not want to go out with the children.',
  'es': 'El perro está en la casa y no quiere salir con los niños.',
  'pt': 'O cachorro não está em casa e os meninos são felizes com ele.',
  'fr': 'Le chien est dans la maison et il ne veut pas sortir avec les enfants.',
  'it': 'Il cane è nella casa e non vuole uscire con i bambini della famiglia.',
  'de': 'Der Hund ist im Haus und will nicht mit den Kindern nach draußen gehen.',
  'fi': 'Koira on talossa ja se ei halua mennä ulos, mutta lapset ovat iloisia.',
  'sw': 'Mbwa yuko ndani ya nyumba na hataki kutoka na watoto wa kijiji.',
  'vi': 'Con chó ở trong nhà và nó không muốn ra ngoài với những đứa trẻ.',
  'pl': 'Pies jest w domu i nie chce wyjść z dziećmi, ale to jest dobre.',
  'ru': 'Собака в доме и не хочет выходить с детьми, это очень хорошо.',
  'uk': 'Собака є в будинку і не хоче виходити з дітьми, її всі люблять.',
  'bg': 'Кучето е в къщата и не иска да излезе с децата, но всички го обичат.',
  'ko': '개는 집 안에 있고 아이들과 함께 나가고 싶어하지 않습니다.',
  'ja': '犬は家の中にいて、子供たちと一緒に出かけたくありません。',
  'th': 'สุนัขอยู่ในบ้านและไม่อยากออกไปกับเด็กๆ',
  'he': 'הכלב נמצא בבית ואינו רוצה לצאת עם הילדים.',
  'ar': 'الكلب في المنزل ولا يريد الخروج مع الأطفال.',
  'fa': 'سگ در خانه است و نمی‌خواهد با بچه‌ها بیرون برود.',
  'ur': 'کتا گھر میں ہے اور بچوں کے ساتھ باہر نہیں جانا چاہتا۔',
  'hi': 'कुत्ता घर में है और बच्चों के साथ बाहर नहीं जाना चाहता है।',
  'mr': 'कुत्रा घरात आहे आणि त्याला मुलांबरोबर बाहेर जायचे नाही.',
  'ne': 'कुकुर घरमा छ र केटाकेटीसँग बाहिर जान चाहँदैन।',
  'bn': 'কুকুরটি ঘরে আছে এবং বাচ্চাদের সাথে বাইরে যেতে চায় না।',
  'ta': 'நாய் வீட்டில் உள்ளது, குழந்தைகளுடன் வெளியே செல்ல விரும்பவில்லை.',
  'te': 'కుక్క ఇంట్లో ఉంది మరియు పిల్లలతో బయటకు వెళ్లాలని అనుకోవడం లేదు.',
  'kn': 'ನಾಯಿ ಮನೆಯಲ್ಲಿದೆ ಮತ್ತು ಮಕ್ಕಳೊಂದಿಗೆ ಹೊರಗೆ ಹೋಗಲು ಬಯಸುವುದಿಲ್ಲ.',
  'gu': 'કૂતરો ઘરમાં છે અને બાળકો સાથે બહાર જવા માંગતો નથી.',
  'pa': 'ਕੁੱਤਾ ਘਰ ਵਿੱਚ ਹੈ ਅਤੇ ਬੱਚਿਆਂ ਨਾਲ ਬਾਹਰ ਨਹੀਂ ਜਾਣਾ ਚਾਹੁੰਦਾ।',
  'ml': 'നായ വീട്ടിലുണ്ട്, കുട്ടികളോടൊപ്പം പുറത്തുപോകാൻ ആഗ്രഹിക്കുന്നില്ല.',
}


def test_offline_language_heuristic_covers_ifeval_languages():
  detected = {code: ifeval._detect_heuristic(text) for code, text in LANGUAGE_SAMPLES.items()}  # pylint: disable=protected-access
  assert detected == {code: code for code in LANGUAGE_SAMPLES}
