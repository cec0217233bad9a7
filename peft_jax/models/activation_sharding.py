"""Sharding constraints on the decoder's activations by logical axis name (as MaxText's
``nn.with_logical_constraint``), driven by the same rules table as the parameters.

The decoder calls :func:`constrain` on its activations with names such as
``('batch', 'length', 'embed')``. Outside an :func:`activation_sharding` context this is the
identity, so the model runs unchanged on one device, in decoding and in tests. Inside one (the
trainer enters it while tracing its loss), each call becomes ``jax.lax.with_sharding_constraint``
with the ``NamedSharding`` the rules give that activation's names and shape
(``common.axis_rules``: the same first-unused, divisibility-aware reading as the parameters').

With the default rules an activation ``[B, T, d]`` is split over ``('data', 'fsdp')`` on its batch
and replicated on ``embed`` (``embed``'s ``fsdp`` is taken by the batch), q/k/v and the MLP hidden
state are split on ``tensor`` like their kernels' outputs, and the logits on ``vocab``: data
parallelism with FSDP weights, and Megatron-style tensor parallelism when ``tensor`` > 1. Without
the constraints XLA chooses every intermediate layout itself, and with FSDP-sharded weights it
can pick contraction-dimension splits that all-reduce activations instead of gathering weights
(docs/SCALE.md shows the difference on a 7B step).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterable, Iterator, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from peft_jax.common import axis_rules

_ACTIVE: contextvars.ContextVar[Optional[tuple[Mesh, axis_rules.Rules]]] = contextvars.ContextVar(
  'peft_jax_activation_sharding', default=None
)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Iterable[Sequence[Any]]) -> Iterator[None]:
  """Within this context (while a model is traced), :func:`constrain` places activations on
  ``mesh`` by ``rules`` (a rules table, e.g. ``parallel.sharding.normalize_rules(None)``)."""
  token = _ACTIVE.set((mesh, axis_rules.normalize(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active() -> Optional[tuple[Mesh, axis_rules.Rules]]:
  """The ``(mesh, rules)`` of the enclosing :func:`activation_sharding`, or ``None``."""
  return _ACTIVE.get()


def activation_spec(
  names: Sequence[Optional[str]], shape: Sequence[int]
) -> Optional[PartitionSpec]:
  """The ``PartitionSpec`` the active rules give an activation (``None`` outside a context)."""
  context = _ACTIVE.get()
  if context is None:
    return None
  mesh, rules = context
  resolved = axis_rules.resolve(tuple(names), tuple(shape), dict(mesh.shape), rules)
  return PartitionSpec(*axis_rules.spec_entries(resolved))


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
  """``x`` constrained to the sharding its logical ``names`` get (identity outside a context).

  Raises:
    ValueError: ``names`` does not give one name (or ``None``) per dimension of ``x``.
  """
  if len(names) != x.ndim:
    raise ValueError(f'activation names {tuple(names)} do not match the shape {x.shape}')
  context = _ACTIVE.get()
  if context is None:
    return x
  spec = activation_spec(names, x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(context[0], spec))
