"""A method a user adds is one class and one registry line: the trainer, the arena, the report
and PEFT export take it from there, with no edit anywhere else (docs/ARCHITECTURE.md).

The toy method is defined here, not in peft_jax: a LoRA-family variant whose ``a`` factor starts
with orthonormal columns (``b = 0``, so it is the identity at init). Being of the LoRA family it
saves as a PEFT LoRA, which HF ``peft`` must load with the same logits.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.arena import quick as arena_presets
from peft_jax import hub
from peft_jax.adapters import api
from peft_jax.adapters.core import Adapted
from peft_jax.adapters.lora import LoraFamily
from peft_jax.arena import pipeline
from peft_jax.train import trainer
from peft_jax.train.config import default_config


@dataclasses.dataclass(frozen=True)
class OrthoLoRA(LoraFamily):
  """LoRA with ``a`` initialised to orthonormal columns scaled by ``1/sqrt(d_in)``."""

  name: str = 'ortho_lora'

  def init(self, key, w0):
    self.check(w0)
    d_in, d_out = w0.shape
    q, _ = jnp.linalg.qr(jax.random.normal(key, (d_in, self.rank)))
    return Adapted(
      w0,
      {'lora_a': q / np.sqrt(d_in), 'lora_b': jnp.zeros((self.rank, d_out), jnp.float32)},
      {},
      self,
    )


@pytest.fixture(scope='module')
def registered():
  api.register_method('ortho_lora', OrthoLoRA)  # the one line a new method needs
  yield
  del api.METHODS['ortho_lora']


def test_trainer_and_peft_export(registered, smoke_world, tmp_path):
  import peft  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  config = default_config()
  config.model.path = smoke_world['hf_dir']
  config.adapter.method = 'ortho_lora'
  config.adapter.target_regex = 'all-linear'
  config.adapter.kwargs = dict(rank=4, alpha=8.0)
  config.data = ml_collections.ConfigDict(
    dict(
      path=os.path.join(smoke_world['suite_dir'], 'sft', 'gsm.jsonl'),
      split='train',
      tokenizer='model',
      seq_len=64,
      packing=True,
      shuffle=True,
    )
  )
  config.total_steps = 4
  config.optimizer.peak_lr = 3e-2
  config.progress_bar = False
  config.export.adapter = True
  result = trainer.train(config, str(tmp_path / 'run'))
  tree = jax.device_get(result.tree)
  assert {type(n.method) for n in api.adapted_nodes(tree).values()} == {OrthoLoRA}
  assert result.losses[-1][1] < result.losses[0][1]  # it learns
  model, _, tokenizer = hub.load_pretrained(smoke_world['hf_dir'])
  tokens, mask = hub.encode_prompts(tokenizer, ['What is 3 plus 4?', 'Hi'], chat=True)
  ours = np.asarray(model.apply({'params': tree}, tokens, attention_mask=mask))
  base = transformers.AutoModelForCausalLM.from_pretrained(
    smoke_world['hf_dir'], attn_implementation='eager'
  )
  reference = peft.PeftModel.from_pretrained(base, str(tmp_path / 'run' / 'export' / 'adapter'))
  with torch.no_grad():
    theirs = reference.eval()(
      input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)
    ).logits.numpy()
  real = mask.astype(bool)
  # float32 forward of a 2-layer model with logits of magnitude ~10: a few ulps per op.
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)
  untrained = np.asarray(
    model.apply(
      {'params': hub.load_pretrained(smoke_world['hf_dir'])[1]}, tokens, attention_mask=mask
    )
  )
  assert np.max(np.abs(ours - untrained)) > 1e-2  # the adapter changed the model


def test_arena_and_report(registered, smoke_world, tmp_path):
  config = arena_presets.get_config('smoke')
  config.base = smoke_world['hf_dir']
  config.method_order = ('ortho_lora',)
  config.methods.ortho_lora = dict(
    adapter=dict(kwargs=dict(rank=4, alpha=8.0)), optimizer=dict(peak_lr=3e-2)
  )
  results = pipeline.run_arena(config, str(tmp_path / 'arena'))
  entry = results['methods']['ortho_lora']
  # all-linear on 2 layers (d 32, heads and kv 2 x 16, mlp 64), rank 4: 4 (d_in + d_out) each.
  shapes = [(32, 32)] * 4 + [(32, 64)] * 2 + [(64, 32)]
  assert entry['trainable_params'] == 2 * sum(4 * (i + o) for i, o in shapes)
  assert entry['rewind']['kind'] == 'additive'
  html = open(os.path.join(tmp_path, 'arena', 'report', 'index.html')).read()
  assert 'ortho_lora' in html
