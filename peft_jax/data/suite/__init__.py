"""The offline capability suite: a generated world, general tasks, target tasks, a corpus.

General tasks (pretraining): IFEval-style instructions, NQ-open questions about an invented world,
BBH-style algorithmic tasks. Target tasks (fine-tuning only): GSM8K-style word problems and letter
ciphers. All stored in the real benchmark formats (docs/CONVENTIONS.md); `generate_suite` writes
them, `train_tokenizer` trains the matching byte-level BPE tokenizer.
"""

from peft_jax.data.suite.bbh_tasks import BBH_TASKS
from peft_jax.data.suite.generate import (
  BBH_PROMPT,
  DEFAULT_SIZES,
  GENERAL_TASKS,
  GSM_PROMPT,
  NQ_PROMPT,
  TARGET_TASKS,
  generate_suite,
  nq_prompt,
  tokenizer_training_files,
)
from peft_jax.data.suite.ifeval_tasks import IFEVAL_INSTRUCTION_IDS
from peft_jax.data.tokenizer_train import CHAT_TEMPLATE, render_chat, render_prompt, train_tokenizer

__all__ = [
  'BBH_PROMPT',
  'BBH_TASKS',
  'CHAT_TEMPLATE',
  'GSM_PROMPT',
  'NQ_PROMPT',
  'DEFAULT_SIZES',
  'GENERAL_TASKS',
  'IFEVAL_INSTRUCTION_IDS',
  'TARGET_TASKS',
  'generate_suite',
  'nq_prompt',
  'render_chat',
  'render_prompt',
  'tokenizer_training_files',
  'train_tokenizer',
]
