"""Every malformed input file is reported with the file (and line, for JSON Lines), what was
expected and what was found."""

import json
import logging
import os
import struct

import ml_collections
import numpy as np
import pytest
from reliability_support import train_args
from safetensors.numpy import save_file

from peft_jax.common import cli
from peft_jax.data import sft
from peft_jax.hub import checkpoint as hub_checkpoint
from peft_jax.hub import peft_format
from peft_jax.models import ModelConfig
from peft_jax.train import checkpoint as ckpt_lib
from peft_jax.train import config as config_lib
from peft_jax.train import trainer

ROW = {'prompt': 'q ', 'completion': 'a'}


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text)
  return str(path)


def test_empty_and_blank_jsonl(tmp_path):
  path = _write(tmp_path / 'empty.jsonl', '')
  with pytest.raises(ValueError, match=rf'{path} is empty; expected JSON Lines'):
    sft.read_rows(path)
  path = _write(tmp_path / 'blank.jsonl', '\n  \n')
  with pytest.raises(ValueError, match=rf'{path} .*is empty|{path} holds no rows'):
    sft.read_rows(path)


def test_malformed_jsonl_line(tmp_path):
  good = json.dumps(ROW)
  path = _write(tmp_path / 'bad.jsonl', f'{good}\n{good}\n{{"prompt": "x", "completion" 3}}\n')
  with pytest.raises(
    ValueError,
    match=rf'{path} line 3: not valid JSON \(.*column 30\); '
    r'expected one JSON object per line.*Found:',
  ):
    sft.read_rows(path)
  path = _write(tmp_path / 'list.jsonl', f'{good}\n[1, 2]\n')
  with pytest.raises(ValueError, match=rf'{path} line 2: expected a JSON object .*found list'):
    sft.read_rows(path)
  path = _write(tmp_path / 'keys.jsonl', f'{good}\n{{"question": "x"}}\n')
  loaded = sft.read_rows(path)
  with pytest.raises(
    ValueError,
    match=rf'{path} line 2: SFT row has keys \[\'question\'\]; '
    r'expected "prompt" and "completion"',
  ):
    sft.build_sft_arrays(loaded.rows, sft.ByteTokenizer(64), 16, locations=loaded.locations)


def test_bad_numbers_in_config():
  config = config_lib.default_config()
  config.data.path = 'x.jsonl'
  config.batch_size = 0
  with pytest.raises(ValueError, match=r'config.batch_size=0 must be a positive integer'):
    config_lib.validate_config(config)


def test_non_json_run_config(tmp_path):
  path = _write(tmp_path / 'config.json', '{"seed": 0,\n "model": oops}')
  with pytest.raises(
    ValueError,
    match=rf'{path} line 2 column 11: not valid JSON.*expected '
    r'the JSON object launch.train wrote',
  ):
    ckpt_lib.check_or_write_config(str(tmp_path), {'seed': 0})


def test_non_json_adapter_config(tmp_path):
  _write(tmp_path / 'adapter_config.json', 'peft_type = LORA')
  save_file({'x': np.zeros(2, np.float32)}, str(tmp_path / 'adapter_model.safetensors'))
  with pytest.raises(
    ValueError,
    match=rf'{tmp_path}/adapter_config.json line 1 column 1: not '
    r'valid JSON.*expected a PEFT adapter config',
  ):
    peft_format.load_adapter({}, str(tmp_path))


def _hf_dir(tmp_path):
  """A tiny HF directory: config.json and a real model.safetensors (safetensors' own writer)."""
  config = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
  )
  directory = tmp_path / 'hf'
  directory.mkdir()
  _write(directory / 'config.json', json.dumps(hub_checkpoint.config_to_hf_dict(config)))
  rng = np.random.default_rng(0)
  tensors = {
    'model.embed_tokens.weight': rng.standard_normal((64, 32)).astype(np.float32),
    'model.norm.weight': np.ones(32, np.float32),
  }
  save_file(tensors, str(directory / 'model.safetensors'))
  return directory


def test_truncated_safetensors(tmp_path):
  directory = _hf_dir(tmp_path)
  file = directory / 'model.safetensors'
  size = os.path.getsize(file)
  with open(file, 'r+b') as f:
    f.truncate(size - 5000)
  with pytest.raises(
    ValueError,
    match=rf'{file} is truncated: tensor .* needs bytes \[\d+, '
    rf'\d+\) .*expected a file of {size} bytes, '
    rf'found {size - 5000}',
  ):
    hub_checkpoint.load_hf_directory(directory)


def test_garbage_safetensors_header(tmp_path):
  directory = _hf_dir(tmp_path)
  file = directory / 'model.safetensors'
  with open(file, 'r+b') as f:
    f.write(struct.pack('<Q', 2**62))
  with pytest.raises(
    ValueError,
    match=rf'{file}: its header length field says {2**62} bytes '
    r'but only \d+ bytes follow; expected a safetensors',
  ):
    hub_checkpoint.load_hf_directory(directory)
  with open(file, 'r+b') as f:
    f.write(struct.pack('<Q', 16) + b'not json at all!')
  with pytest.raises(ValueError, match=rf'{file}: the 16-byte header is not valid JSON'):
    hub_checkpoint.load_hf_directory(directory)
  adapter = tmp_path / 'adapter'
  adapter.mkdir()
  _write(adapter / 'adapter_config.json', json.dumps({'peft_type': 'LORA', 'r': 2}))
  _write(adapter / 'adapter_model.safetensors', 'garbage')
  with pytest.raises(
    ValueError,
    match=rf'{adapter}/adapter_model.safetensors: 7 bytes, too '
    'short for a safetensors file',
  ):
    peft_format.load_adapter({}, str(adapter))


def test_non_json_model_config(tmp_path):
  directory = _hf_dir(tmp_path)
  _write(directory / 'config.json', '{"model_type": "llama",,}')
  with pytest.raises(
    ValueError,
    match=rf'{directory}/config.json line 1 column 24: not valid '
    r'JSON.*expected an HF model config',
  ):
    hub_checkpoint.load_hf_directory(directory)


def test_bad_tokenizer_path_named_as_tokenizer(tmp_path):
  config = config_lib.default_config()
  config.data.tokenizer = str(tmp_path / 'no_tokenizer')
  with pytest.raises(
    FileNotFoundError,
    match=rf"config.data.tokenizer='{tmp_path}/no_tokenizer':"
    r' tokenizer directory .* does not exist',
  ):
    trainer.make_tokenizer(config, None, None)
  (tmp_path / 'empty_dir').mkdir()
  config.data.tokenizer = str(tmp_path / 'empty_dir')
  with pytest.raises(FileNotFoundError, match=r'holds no tokenizer: expected one of'):
    trainer.make_tokenizer(config, None, None)


def test_unknown_config_override_key(launcher, tmp_path):
  config = ml_collections.ConfigDict(config_lib.default_config().to_dict())
  message = cli.unknown_override(config, 'train.stepz')
  assert "unknown config key 'train.stepz': the config has no key 'train'" in message
  close = message.split('Close valid keys: ')[1].split('. Keys of')[0].split(', ')
  assert 'total_steps' in close[:2], message  # the nearest keys first (stop_step is as near)
  assert "group 'data' has no key 'pathh'" in cli.unknown_override(config, 'data.pathh')
  assert 'data.path' in cli.unknown_override(config, 'data.pathh')
  assert cli.unknown_override(config, 'data.path') is None
  code, _, err = launcher.run(
    train_args(str(tmp_path / 'run'), 'x.jsonl') + ['--config.train.stepz=3']
  )
  assert code == 1
  assert (
    "FATAL Flags parsing error: --config.train.stepz: unknown config key 'train.stepz'" in err
  ), err[-2000:]
  assert 'configs/train/tiny.py:lora' in err and 'KeyError' not in err
  assert not os.path.exists(tmp_path / 'run')


def test_truncated_rows_counted_and_dropped(tmp_path, caplog):
  rows = [ROW, {'prompt': 'p' * 4, 'completion': 'c' * 30}, ROW, ROW]
  path = _write(tmp_path / 'rows.jsonl', ''.join(json.dumps(r) + '\n' for r in rows))
  loaded = sft.read_rows(path)
  tokenizer = sft.ByteTokenizer(64)
  caplog.set_level(logging.WARNING)
  cut = sft.build_sft_arrays(loaded.rows, tokenizer, 16, packing=False, locations=loaded.locations)
  text = ' '.join(r.getMessage() for r in caplog.records)
  assert '1 of 4 SFT rows are longer than seq_len=16 tokens and were cut to seq_len' in text
  assert f'Example: {path} line 2 (36 tokens): {json.dumps(rows[1])}' in text
  assert 'config.data.drop_truncated=True' in text
  caplog.clear()
  dropped = sft.build_sft_arrays(
    loaded.rows, tokenizer, 16, packing=False, drop_truncated=True, locations=loaded.locations
  )
  assert len(cut['tokens']) == 4 and len(dropped['tokens']) == 3
  assert 'were dropped' in ' '.join(r.getMessage() for r in caplog.records)
  # A cut row loses its closing EOS; every kept row still ends in one.
  eos = tokenizer.eos_token_id
  assert eos not in cut['tokens'][1]
  assert all(eos in row for row in dropped['tokens'])
