"""The drafting algorithms eagle_ext trains, in one registry: the only place that names them.

Each algorithm is described twice, at two weights:

- an :class:`AlgorithmSpec` here: plain facts (its config section, the meta key of its depth, whether it drafts
  in parallel with a mask token, whether rows may be packed or read from an offline cache). It imports nothing,
  so the config, the CLI's ``--help`` and the export code can read it without loading torch;
- a strategy object (``<package>/algorithm.py``), loaded on first use by :func:`get_algorithm`, which builds the
  draft and its trainer module, runs a training or eval step and names its metric schema.

Adding a drafter means one package with an ``algorithm.py`` and one :data:`REGISTRY` line.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["AlgorithmSpec", "REGISTRY", "ALGORITHM_NAMES", "algorithm_spec", "get_algorithm"]


@dataclass(frozen=True)
class AlgorithmSpec:
    """What the rest of the library may know about an algorithm without loading it."""

    name: str  # the config / checkpoint / export value ("eagle3")
    label: str  # how tables and logs print it ("EAGLE-3")
    depth_key: str  # config-section and checkpoint-meta key of the tokens drafted per row ("ttt_steps")
    parallel_drafting: bool  # drafts all depths in one forward, with a mask token standing for unknown tokens
    packing: bool  # rows may pack several documents (data.packed_sequence_size > 0)
    offline_cache: bool  # can train from an offline target cache (eagle-ext precompute)
    strategy: str  # "module:attribute" of the strategy object

    @property
    def config_section(self) -> str:
        """The recipe config section holding this algorithm's knobs (its name)."""
        return self.name


REGISTRY: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec("eagle3", "EAGLE-3", "ttt_steps", parallel_drafting=False, packing=True, offline_cache=True,
                      strategy="eagle_ext.eagle3.algorithm:EAGLE3"),
        AlgorithmSpec("peagle", "P-EAGLE", "num_depths", parallel_drafting=True, packing=False, offline_cache=False,
                      strategy="eagle_ext.peagle.algorithm:PEAGLE"),
    )
}

ALGORITHM_NAMES: tuple[str, ...] = tuple(REGISTRY)


def algorithm_spec(name: Any, *, key: str = "algorithm") -> AlgorithmSpec:
    """The spec of algorithm ``name``.

    Raises:
        ValueError: ``name`` is not a registered algorithm (the message names ``key``, the value and the choices).
    """
    spec = REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"{key} must be one of {ALGORITHM_NAMES}, got {name!r}")
    return spec


def get_algorithm(name: Any, *, key: str = "algorithm"):
    """The strategy object of algorithm ``name`` (its module is imported on first use)."""
    module, attribute = algorithm_spec(name, key=key).strategy.split(":")
    return getattr(importlib.import_module(module), attribute)
