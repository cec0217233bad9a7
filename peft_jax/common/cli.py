"""Command-line helpers shared by the launchers (``launch/*.py``).

:func:`run` is ``absl.app.run`` with two additions:

* a config-override flag naming a key the config does not have (``--config.train.stepz=3``)
  fails with the unknown key, the config file and the closest valid keys, instead of
  ml_collections' bare ``KeyError: "'train'"``;
* :class:`peft_jax.common.errors.RunFailure` subclasses raised by ``main`` (a diverged run, a
  locked workdir, a SIGTERM stop, a full disk) end the process with their message and exit code
  rather than a traceback.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any, Callable, Optional, Sequence

from absl import app, flags

from peft_jax.common.errors import RunFailure


def _flatten_keys(config: Any, prefix: str = '') -> list[str]:
  keys = []
  items = config.items() if hasattr(config, 'items') else []
  for key, value in items:
    name = f'{prefix}{key}'
    keys.append(name)
    if hasattr(value, 'items'):
      keys.extend(_flatten_keys(value, name + '.'))
  return keys


def unknown_override(config: Any, path: str) -> Optional[str]:
  """A message when ``path`` (``'train.stepz'``) is not a key of ``config``, else ``None``."""
  node = config
  parts = path.split('.')
  for depth, part in enumerate(parts):
    if hasattr(node, 'items') and part in node:
      node = node[part]
      continue
    if not hasattr(node, 'items') and depth > 0:
      parent = '.'.join(parts[:depth])
      return (
        f'{parent} is a {type(node).__name__} ({node!r}), not a config group, so it has '
        f'no key {part!r}'
      )
    parent = '.'.join(parts[:depth])
    valid = _flatten_keys(config)

    # Close keys: similar to the whole path, or with a leaf similar to the one asked for.
    def score(key):
      return max(
        difflib.SequenceMatcher(None, path, key).ratio(),
        difflib.SequenceMatcher(None, parts[-1], key.rsplit('.', 1)[-1]).ratio(),
      )

    close = sorted(
      (k for k in valid if k != parent and score(k) >= 0.5), key=lambda k: (-score(k), k)
    )[:5]
    where = f'group {parent!r}' if parent else 'the config'
    group = sorted(node) if hasattr(node, 'items') else []
    return (
      f'unknown config key {path!r}: {where} has no key {part!r}. '
      + (f'Close valid keys: {", ".join(close)}. ' if close else '')
      + (f'Keys of {where}: {", ".join(map(str, group))}.' if group else '')
    )
  return None


def _config_flag_names(flag_values) -> list[str]:
  names = []
  for name in flag_values:
    flag = flag_values[name]
    if type(flag).__name__ == '_ConfigFlag':
      names.append(name)
  return sorted(set(names))


def diagnose_config_overrides(argv: Sequence[str], flag_values=flags.FLAGS) -> Optional[str]:
  """Checks every ``--<config flag>.<path>=...`` of ``argv`` against its loaded config file;
  returns a message for the first unknown key (``None``: nothing wrong found)."""
  for name in _config_flag_names(flag_values):
    file_arg, overrides = None, []
    for arg in argv[1:]:
      if not arg.startswith('--'):
        continue
      key = arg[2:].split('=', 1)[0]
      if key == name and '=' in arg:
        file_arg = arg.split('=', 1)[1]
      elif key.startswith(name + '.'):
        overrides.append(key[len(name) + 1 :])
      elif key.startswith('no' + name + '.'):
        overrides.append(key[len(name) + 3 :])
    if not overrides:
      continue
    flag = flag_values[name]
    try:
      config = flag.parser.parse(file_arg) if file_arg is not None else flag.default
    except Exception:  # pylint: disable=broad-except  (the real parse reports this one)
      continue
    if config is None:
      continue
    for path in overrides:
      problem = unknown_override(config, path)
      if problem:
        return f'--{name}.{path}: {problem} (config file {file_arg or "default"})'
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that names an unknown config-override key (module docstring)."""
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # pylint: disable=broad-except  (ml_collections raises KeyError..)
    message = diagnose_config_overrides(argv)
    if message is None:
      if not isinstance(error, flags.Error):
        raise
      message = str(error)
    sys.stderr.write(
      f'FATAL Flags parsing error: {message}\n'
      'Pass --helpshort or --helpfull to see help on flags.\n'
    )
    sys.exit(1)


def run(main: Callable[[list[str]], Any]) -> None:
  """``app.run(main)`` with :func:`parse_flags`; a :class:`RunFailure` from ``main`` prints
  ``<Type>: <message>`` to stderr and exits with its ``exit_code``."""

  def wrapped(argv):
    try:
      return main(argv)
    except RunFailure as error:
      # One write that starts on a fresh line: a background thread (orbax's serializers after a
      # failed save) may be half-way through printing its own traceback, and the report must
      # still be a line of its own that a reader or a script can find.
      sys.stderr.flush()
      sys.stderr.write(f'\n{type(error).__name__}: {error}\n')
      sys.stderr.flush()
      sys.exit(getattr(error, 'exit_code', 1))

  app.run(wrapped, flags_parser=parse_flags)
