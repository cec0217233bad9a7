"""Evaluates a checkpoint, optionally with a PEFT adapter, on the configured tasks.

  python -m launch.evaluate --config=configs/eval/suite.py:/tmp/suite --workdir=/tmp/eval_base \
      --config.model_dir=/tmp/run/export
  python -m launch.evaluate --config=configs/eval/suite.py:/tmp/suite --workdir=/tmp/eval_lora \
      --config.model_dir=/tmp/run/export --config.adapter_dir=/tmp/run/adapter \
      --config.baseline_summary=/tmp/eval_base/summary.json

Writes ``<workdir>/<task>.jsonl``, ``<workdir>/summary.json`` (Target / General axes, and
Forget / Target gain against the baseline when given) and ``<workdir>/eval_config.json``.
A config with ``drift_adapters`` ({name: {adapter_dir, label, nominal_task, config_id}}), or
``--config.drift_adapters_file=adapters.json`` holding the same JSON, instead
evaluates the base and each adapter (``<workdir>/<name>/``) and writes the capability-drift
matrix: ``drift.json``, ``drift.csv``, ``drift_heatmap.png``.
"""

import json
import os

from absl import flags, logging
from ml_collections import config_flags

from peft_jax.common import cli, lock

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Evaluation config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for outputs and summary.json.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  with lock.workdir_lock(_WORKDIR.value):
    _evaluate()


def _evaluate():
  # Imported after absl parsed the flags: importing JAX is slow and reads XLA_FLAGS.
  from peft_jax.evals import runner  # pylint: disable=g-import-not-at-top
  from peft_jax.report import results  # pylint: disable=g-import-not-at-top

  if runner.drift_entries(_CONFIG.value):
    report = runner.run_drift(_CONFIG.value, _WORKDIR.value)
    results.write_drift_heatmap(report, os.path.join(_WORKDIR.value, 'drift_heatmap.png'))
    flagged = [row['name'] for row in report['adapters'] if row['flagged']]
    logging.info('capability drift: flagged adapters %s', flagged)
    print(json.dumps({'flagged': flagged, 'by_label': report['by_label']}))
    return
  summary = runner.run_evaluation(_CONFIG.value, _WORKDIR.value)
  axes = {k: summary.get(k) for k in ('target', 'general', 'forget', 'target_gain') if k in summary}
  logging.info('evaluation axes: %s', json.dumps(axes))
  print(json.dumps(axes))


if __name__ == '__main__':
  cli.run(main)
