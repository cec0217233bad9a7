"""The metric writer's TensorBoard events read back with tensorboardX's own protobufs and CRC
(an independent reader of the format), and its JSONL lines with read_metrics."""

import glob
import os
import struct

import pytest
from tensorboardX.crc32c import crc32c as reference_crc32c
from tensorboardX.proto import event_pb2

from peft_jax.train import metrics


def _masked(crc):
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path):
  with open(path, 'rb') as f:
    data = f.read()
  offset, out = 0, []
  while offset < len(data):
    (length,) = struct.unpack('<Q', data[offset : offset + 8])
    (length_crc,) = struct.unpack('<I', data[offset + 8 : offset + 12])
    assert length_crc == _masked(reference_crc32c(data[offset : offset + 8]))
    payload = data[offset + 12 : offset + 12 + length]
    (payload_crc,) = struct.unpack('<I', data[offset + 12 + length : offset + 16 + length])
    assert payload_crc == _masked(reference_crc32c(payload))
    out.append(payload)
    offset += 16 + length
  return out


def test_events_are_tensorboard_records(tmp_path):
  assert metrics.crc32c(b'123456789') == 0xE3069283  # the CRC-32C check value
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(1, {'loss': 2.5, 'update_norm/layers_0': 0.125})
  writer.write(2, {'loss': 1.5, 'update_norm/layers_0': 0.25})
  writer.close()
  (path,) = glob.glob(os.path.join(tmp_path, 'tensorboard', 'events.out.tfevents.*'))
  events = [event_pb2.Event.FromString(r) for r in _records(path)]
  assert events[0].file_version == 'brain.Event:2'
  scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
  assert scalars == [
    (1, 'loss', 2.5),
    (1, 'update_norm/layers_0', 0.125),
    (2, 'loss', 1.5),
    (2, 'update_norm/layers_0', 0.25),
  ]
  assert [r['loss'] for r in metrics.read_metrics(str(tmp_path))] == [2.5, 1.5]


def test_read_metrics_names_a_malformed_line(tmp_path):
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write('{"step": 1, "loss": 1.0}\nnot json\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
  with pytest.raises(ValueError, match=r'metrics.jsonl line 2: not a JSON object'):
    metrics.read_metrics(str(tmp_path))
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')  # a run killed mid-line
  assert [r['step'] for r in metrics.read_metrics(str(tmp_path))] == [1]
