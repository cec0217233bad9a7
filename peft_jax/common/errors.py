"""The base class of errors that end a run with a message rather than a traceback."""


class RunFailure(Exception):
  """A run stopped for a reason its message explains in full (a diverged run, a locked
  workdir, a full disk, a signal). Launchers print ``<Type>: <message>`` and exit with
  ``exit_code`` instead of printing a traceback (``peft_jax.common.cli.run``)."""

  exit_code = 1
