"""Stacked members' trees: k trees' leaves on a leading member axis, one member's slice, and the
check that k states can be stacked (:mod:`plif_jax.training.member_steps`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


def stack(trees: Sequence[Any]) -> Any:
    """The trees' leaves stacked on a new leading axis (typed PRNG keys included)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Member ``index`` of a stacked tree."""
    return jax.tree.map(lambda x: x[index], tree)


def member_view(state: Any, index: int) -> Any:
    """Member ``index``'s ``TrainState`` (params and rest; no optimizer state)."""
    return state._replace(
        params=unstack(state.params, index), rest=unstack(state.rest, index), opt_state=None
    )


def check_same_structure(states: Sequence[Any]) -> None:
    """Raises ValueError when members' states differ in structure, shapes or dtypes."""

    def sig(s):
        leaves, treedef = jax.tree.flatten(s)
        return treedef, [(jnp.shape(x), jnp.result_type(x)) for x in leaves]

    first = sig(states[0])
    for i, s in enumerate(states[1:], 1):
        if sig(s) != first:
            raise ValueError(
                f"Member {i}'s train state differs from member 0's in structure or shapes; members "
                "may differ only in values that keep the shapes (plif_jax.training.members)."
            )
