"""Analysis of one training run: ``python -m launch.analyze --workdir=RUN [--config=...]``.

Prompts default to the run's own training data (as both general and target distribution); give
``general_data`` (e.g. the suite's sft/general.jsonl) for a real general-vs-target comparison, and
``tasks`` (peft_jax.evals.load_task specs) to evaluate the interpolation / rewinding α-grid.
"""

import ml_collections


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.general_data = ''  # SFT/prompt file of the general distribution ('' = the run's data)
  config.target_data = ''  # SFT/prompt file of the target distribution ('' = the run's data)
  config.target = ''  # the target task name among `tasks` ('' = the first target-kind task)
  config.tasks = []
  config.geometry = ml_collections.ConfigDict(
    dict(num_prompts=32, module='layers_0/self_attn/q_proj', gram_max_tokens=1024)
  )
  config.paths = ml_collections.ConfigDict(
    dict(alphas=(0.0, 0.25, 0.5, 0.75, 1.0), tradeoff_weight=0.5, oft_generator_schedule='sqrt')
  )
  config.eval = ml_collections.ConfigDict(dict(batch_size=64))
  return config
