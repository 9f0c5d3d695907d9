"""A target and its exported drafts, loaded and ready for speculative decoding.

The one place that joins the target (``AutoModelForCausalLM``), :func:`eagle_ext.serve.export.load_exported_draft`,
:class:`eagle_ext.serve.speculative.TargetRunner` and :func:`eagle_ext.serve.speculative.build_drafter`;
``eagle-ext eval`` (one draft) and the SmolLM2 demo (the reference and the live draft against one target load) both
start from :func:`load_speculative_session`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SpeculativeSession", "load_speculative_session", "training_aux_layer_ids"]


@dataclass
class SpeculativeSession:
    """What :func:`load_speculative_session` returns.

    Attributes:
        model: the target, an HF causal LM on ``device`` in ``dtype``, eval mode.
        runner: the :class:`~eagle_ext.serve.speculative.TargetRunner` capturing ``aux_layer_ids``.
        drafters: per draft name, its drafter (the draft on ``device`` in ``dtype``).
        exports: per draft name, its :class:`~eagle_ext.serve.export.ExportedDraft`.
        aux_layer_ids: the target layers every draft reads (eagle_ext's convention).
        device, dtype: where and in what precision target and drafts run.
    """

    model: Any
    runner: Any
    drafters: dict[str, Any]
    exports: dict[str, Any]
    aux_layer_ids: list[int]
    device: Any
    dtype: Any


def training_aux_layer_ids(exported: Any, path: str) -> tuple[list[int], str | None]:
    """The target layers the draft was trained on: its ``eagle_ext`` training record's when the export has one,
    else those its serving config names; and a warning (else ``None``) when the two disagree, since engines then
    capture other layers than training did."""
    serving = list(exported.aux_layer_ids)
    trained = list(exported.metadata.get("aux_layer_ids") or serving)
    if trained == serving:
        return trained, None
    return trained, (f"draft {path!r} was trained on aux layers {trained} (its eagle_ext record) but its "
                     f"{exported.format} config names {serving} (eagle_ext convention): engines will capture other "
                     "layers than training did (`eagle-ext export --check` reports it)")


def load_speculative_session(target: str, drafts: Mapping[str, str], *, device: Any = "cpu",
                             dtype: Any = "float32") -> SpeculativeSession:
    """Load the target once and every export in ``drafts`` (name -> export directory) against it.

    A draft that ships no embedding shares the target's. Each draft reads the aux layers of
    :func:`training_aux_layer_ids` (a disagreement is printed to stderr as a warning).

    Args:
        target: an HF model directory (or a cached hub id).
        drafts: at least one export directory, by name (the keys of ``drafters`` and ``exports``).
        device: a torch device or its name.
        dtype: a torch dtype or its name (``"bfloat16"``).

    Raises:
        ValueError: no draft; a draft whose vocabulary differs from the target's; drafts that read different target
            layers (one target capture serves them all); the errors of ``load_exported_draft``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from eagle_ext._hf import dtype_kwargs
    from eagle_ext.serve.export import load_exported_draft
    from eagle_ext.serve.speculative import TargetRunner, build_drafter

    if not drafts:
        raise ValueError("drafts must name at least one export directory, got none")
    device = torch.device(device)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(target, **dtype_kwargs(dtype)).to(device)
    embed = model.get_input_embeddings().weight  # used only by an export without its own embedding
    vocab = embed.shape[0]
    exports, aux = {}, {}
    for name, path in drafts.items():
        exported = load_exported_draft(path, embed_tokens=embed)
        if exported.draft.config.vocab_size != vocab:
            raise ValueError(f"the draft's vocab_size ({exported.draft.config.vocab_size}) differs from the target's "
                             f"({vocab}); draft {path!r} was not trained for target {target!r}")
        aux[name], warning = training_aux_layer_ids(exported, path)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        exports[name] = exported
    if len({tuple(ids) for ids in aux.values()}) != 1:
        raise ValueError(f"the drafts read different target layers {aux}; one evaluation needs the same aux layers")
    aux_layer_ids = next(iter(aux.values()))
    runner = TargetRunner(model, aux_layer_ids)
    drafters = {name: build_drafter(e.draft.to(device=device, dtype=dtype), mask_token_id=e.mask_token_id)
                for name, e in exports.items()}
    return SpeculativeSession(model=model, runner=runner, drafters=drafters, exports=exports,
                              aux_layer_ids=aux_layer_ids, device=device, dtype=dtype)
