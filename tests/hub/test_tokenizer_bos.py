"""Chat prompts get the bos the tokenizer adds to plain text, exactly once."""

from peft_jax import hub
from peft_jax.data import suite


def test_chat_prompt_starts_with_single_bos(tmp_path):
  texts = ['hello world, this is a tiny corpus.'] * 20
  suite.train_tokenizer(texts, str(tmp_path), vocab_size=300)
  tokenizer = hub.load_tokenizer(str(tmp_path))
  chat, _ = hub.encode_prompts(tokenizer, ['hello world'], chat=True)
  plain, _ = hub.encode_prompts(tokenizer, ['hello world'], chat=False)
  bos = tokenizer.bos_token_id
  assert chat[0, 0] == bos and chat[0, 1] != bos
  assert plain[0, 0] == bos and plain[0, 1] != bos
  # The rest of the chat prompt is exactly the template's rendering.
  rendered = tokenizer.apply_chat_template(
    [{'role': 'user', 'content': 'hello world'}], add_generation_prompt=True, tokenize=False
  )
  assert chat[0, 1:].tolist() == tokenizer(rendered, add_special_tokens=False)['input_ids']
