"""Speculative decoding in plain PyTorch (batch size 1, no serving engine): the evaluator's engine.

A round, with ``x[0..N]`` the committed tokens (the target has processed ``x[0..N-1]``; ``x[N]`` is the
last committed token, not yet fed to the target):

1. The drafter proposes ``K`` tokens ``d[1..K]`` for positions ``N+1..N+K``.
2. The target runs ONE forward over ``x[N], d[1..K]`` (positions ``N..N+K``) on its KV cache
   (transformers ``DynamicCache``): logits row ``i`` predicts position ``N+1+i``, and forward hooks on the
   chosen decoder layers capture the aux hidden states of those positions.
3. Acceptance (:func:`accept_draft_tokens`): the first ``a`` draft tokens are accepted, then one more token
   comes from the target (the correction after a rejection, or the bonus token when all ``K`` pass), so a
   round commits ``a + 1`` tokens for one target forward. The target cache is cropped to ``N + a + 1``
   positions (the rejected drafts' keys go) and the aux states of positions ``N..N+a`` go to the drafter.

Draft-side frame (the trainers' alignment, :mod:`eagle_ext.models.target`): draft *slot* ``t`` combines the
embedding of token ``x[t+1]`` with the projected aux hidden state of position ``t``, runs at RoPE position
``t`` and predicts ``x[t+2]``. The drafter keeps a KV cache of its slots ``0..N-1`` (only verified tokens ever
enter it); each round it first appends the slots of the newly verified positions in one forward, then:

- EAGLE-3 (:class:`Eagle3Drafter`, chain drafting): the output at the last slot ``N-1`` gives ``d[1]``; step
  ``k = 1..K-1`` feeds token ``d[k]`` with the draft's own previous output as hidden state at RoPE position
  ``N-1+k`` and attends to the cached slots plus the chain's earlier steps, exactly the TTT recurrence of
  :class:`eagle_ext.eagle3.Eagle3TrainerModule` (step ``k`` at slot ``t``: ids shifted ``k`` more, hidden
  state = step ``k-1`` output at ``t``, RoPE ``t + k``, keys of steps ``1..k`` at the same slot);
- P-EAGLE (:class:`PEagleDrafter`, parallel drafting): the same forward also carries ``K-1`` mask slots
  (``mask_token_id`` + projected ``mask_hidden``, RoPE ``N..N+K-2``), so ONE forward proposes all ``K``
  tokens, as the COD rollout anchored at ``N-1`` in :class:`eagle_ext.peagle.PEagleTrainerModule`.

After drafting the drafter crops its cache back to its ``N`` verified slots. Draft-vocabulary ids map to
target ids through ``d2t`` (``target = draft + d2t[draft]``) when the draft vocabulary is compressed.

Acceptance is lossless: greedy decoding gives token for token the target's own greedy output
(:func:`target_decode`, the same KV-cache code path), and with ``temperature > 0`` standard speculative
sampling keeps the target's distribution.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from eagle_ext._checks import check_int
from eagle_ext.models.attention import masked_attention
from eagle_ext.models.target import find_decoder_layers

__all__ = [
    "DecodeResult",
    "DraftKVCache",
    "Drafter",
    "Eagle3Drafter",
    "PEagleDrafter",
    "Proposal",
    "TargetRunner",
    "accept_draft_tokens",
    "build_drafter",
    "evaluate_drafters",
    "evaluate_speculative",
    "format_report",
    "lossless_label",
    "speculative_decode",
    "summarize_decodes",
    "target_decode",
]



def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    return float(temperature)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ target


class TargetRunner:
    """An HF causal LM with a KV cache that also returns the aux hidden states of chosen layers.

    Rolling the cache back (:meth:`crop`, after rejected draft tokens) works for every layer type:

    - attention-only targets (full or sliding-window layers) use a plain ``DynamicCache()``: every layer keeps
      all its keys and the model's own mask applies each sliding layer's window, so a crop is exact (a cache
      built from the config would hold only the last ``window`` keys of sliding layers, which cannot be cropped
      once the window is full: gpt-oss, Gemma 3, Mistral / Qwen2 with ``sliding_window``);
    - targets with recurrent / linear-attention layers (Qwen3-Next, ...; see
      :func:`eagle_ext.models.families.stateful_layer_types`) use the model's own cache and, where transformers
      can record past states (``Cache.activate_past_recording``, transformers >= 5.x), roll their state back
      natively (``rollback="record"``: each forward keeps the intermediate recurrent states of its last
      ``max_rollback`` tokens); otherwise (``rollback="rerun"``) the runner saves the cache before each forward
      and, on a crop, restores it and re-runs the kept tokens (one extra target forward per rejecting round).

    Args:
        model: the HF causal LM (put in eval mode; its parameters stop requiring grad).
        aux_layer_ids: 0-indexed decoder layers whose OUTPUT is captured (eagle_ext's convention, HF
            ``hidden_states[i + 1]``; see :func:`eagle_ext.models.default_eagle3_aux_layer_ids`), or None to
            capture nothing (target-only decoding, or a drafter that needs no hidden states).
        rollback: ``"auto"`` (``"crop"`` for attention-only targets; ``"record"`` for stateful ones when the
            installed transformers can record past states, else ``"rerun"``), or one of those three to force it.
        max_rollback: with ``rollback="record"``, the most positions one crop may remove (a round of K draft
            tokens removes at most K; default 64).

    Raises:
        ValueError: ids that are not distinct ints in ``[0, L)``, no decoder-layer container, an unknown
            ``rollback``, or ``"crop"`` / ``"record"`` forced where they cannot roll the target back.
    """

    ROLLBACKS = ("auto", "crop", "record", "rerun")

    def __init__(self, model: nn.Module, aux_layer_ids: Sequence[int] | None = None, *, rollback: str = "auto",
                 max_rollback: int = 64):
        from eagle_ext.models.families import stateful_layer_types

        self.model = model.eval().requires_grad_(False)
        self.layers = find_decoder_layers(model)
        if aux_layer_ids is not None:
            ids = list(aux_layer_ids)
            n = len(self.layers)
            if not ids or len(set(ids)) != len(ids) or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in ids
            ):
                raise ValueError(f"aux_layer_ids must be distinct ints in [0, {n}), got {aux_layer_ids!r}")
            aux_layer_ids = ids
        self.aux_layer_ids = aux_layer_ids
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed past_key_values to cache (the old name is deprecated and mis-infers
        # positions after a crop in some versions).
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        cls = _dynamic_cache_class()
        self._cache_takes_config = "config" in inspect.signature(cls.__init__).parameters
        self.max_rollback = check_int("max_rollback", max_rollback, 1)
        config = getattr(model, "config", None)
        self.stateful_layer_types = stateful_layer_types(config) if config is not None else []
        can_record = self._cache_takes_config and callable(getattr(cls, "activate_past_recording", None))
        if rollback not in self.ROLLBACKS:
            raise ValueError(f"rollback must be one of {self.ROLLBACKS}, got {rollback!r}")
        if rollback == "auto":
            rollback = "crop" if not self.stateful_layer_types else ("record" if can_record else "rerun")
        elif rollback == "crop" and self.stateful_layer_types:
            raise ValueError(f"rollback='crop' cannot roll back this target's {self.stateful_layer_types} layers "
                             "(their state is not a list of keys); use 'auto', 'record' or 'rerun'")
        elif rollback == "record" and not can_record:
            raise ValueError("rollback='record' needs a transformers whose DynamicCache(config=...) has "
                             "activate_past_recording (transformers >= 5); use 'rerun'")
        self.rollback = rollback
        self.device = next(model.parameters()).device
        self.cache: Any = None
        self._length = 0
        self._ids: list[int] = []  # every token the cache holds ("rerun" re-feeds from them)
        self._saved: tuple[Any, int] | None = None  # ("rerun") the cache before the last forward, its length
        self._uncropped = False  # ("record") the last forward's recorded states are not trimmed yet

    def reset(self) -> None:
        """Start a new sequence (an empty cache)."""
        cls = _dynamic_cache_class()
        if self.rollback == "crop":
            self.cache = cls()  # plain: every layer keeps all its keys (see the class docstring)
        elif self._cache_takes_config:
            self.cache = cls(config=self.model.config)  # the model's layer types, linear-attention states included
        else:
            self.cache = None  # older transformers: the model builds its own (hybrid) cache on the first forward
        self._length = 0
        self._ids = []
        self._saved = None
        self._uncropped = False

    @property
    def length(self) -> int:
        """Positions held in the KV cache."""
        return self._length

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, *, capture_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed ``input_ids`` int64 ``[n]`` at positions ``length .. length + n - 1``; the cache grows by n.

        Returns:
            ``(logits fp32 [n, V], aux [n, num_aux * H] in the model dtype)``; ``aux`` is None unless
            ``capture_aux`` and the runner has ``aux_layer_ids``.

        Raises:
            ValueError: ``input_ids`` not a non-empty 1-D tensor, or a hooked layer did not run.
        """
        if self.cache is None and (self.rollback == "crop" or self._cache_takes_config):
            self.reset()
        if input_ids.dim() != 1 or input_ids.numel() == 0:
            raise ValueError(f"input_ids must be a non-empty 1-D tensor [n], got shape {list(input_ids.shape)}")
        n = input_ids.numel()
        if self.rollback == "record":
            if self._uncropped:
                self.cache.crop(0)  # trims what the previous (uncropped) forward recorded
            self.cache.activate_past_recording(recurrent_states_to_keep=min(n, self.max_rollback + 1))
        elif self.rollback == "rerun":
            self._saved = (copy.deepcopy(self.cache), self._length)
        logits, aux = self._run(input_ids, capture_aux)
        self._uncropped = True
        self._length += n
        self._ids.extend(int(i) for i in input_ids.tolist())
        return logits, aux

    def _run(self, input_ids: torch.Tensor, capture_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        start = self._length
        positions = torch.arange(start, start + input_ids.numel(), device=self.device)[None]
        kwargs = {"input_ids": input_ids.to(self.device)[None], "position_ids": positions,
                  self._cache_kwarg: self.cache, "use_cache": True}
        capture = capture_aux and self.aux_layer_ids is not None
        captured: dict[int, torch.Tensor] = {}
        handles = []
        try:
            if capture:
                for i in self.aux_layer_ids:
                    handles.append(self.layers[i].register_forward_hook(_capture_hook(captured, i)))
            out = self.model(**kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if self.cache is None:  # the model built its own cache
            self.cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        logits = (out.logits if hasattr(out, "logits") else out[0])[0].float()
        if not capture:
            return logits, None
        missing = [i for i in self.aux_layer_ids if i not in captured]
        if missing:
            raise ValueError(f"target decoder layers {missing} did not run during the forward")
        return logits, torch.cat([captured[i][0] for i in self.aux_layer_ids], dim=-1)

    def crop(self, length: int) -> None:
        """Keep the first ``length`` cached positions (drop the keys, or roll back the state, of rejected draft
        tokens).

        Raises:
            ValueError: ``length`` outside ``[0, self.length]``, or a roll-back deeper than the last forward
                (``"rerun"``) or than ``max_rollback`` (``"record"``).
        """
        extra = self.length - length
        if extra < 0 or length < 0:
            raise ValueError(f"length must lie in [0, {self.length}], got {length!r}")
        if self.rollback == "crop":
            if extra > 0:
                # A negative argument removes that many positions in transformers 4.x and 5.x alike.
                self.cache.crop(-extra)
        elif self.rollback == "record":
            if extra > self.max_rollback:
                raise ValueError(f"cannot roll back {extra} positions; this runner records {self.max_rollback} "
                                 "(raise max_rollback)")
            if self._uncropped:
                self.cache.crop(-extra)  # also trims the recorded states when extra == 0
                self._uncropped = False
            elif extra:
                raise ValueError("with rollback='record' only the last forward's positions can be removed")
        elif extra > 0:  # rerun: restore the cache saved before the last forward and re-feed the kept tokens
            if self._saved is None or length < self._saved[1]:
                raise ValueError(f"cannot roll back to {length} positions: the saved state holds "
                                 f"{None if self._saved is None else self._saved[1]}")
            kept = self._ids[self._saved[1]:length]
            self.cache, self._length = self._saved
            self._saved = None
            del self._ids[self._length:]
            if kept:
                self.forward(torch.tensor(kept, dtype=torch.int64), capture_aux=False)
            return
        self._length = length
        del self._ids[length:]


def _dynamic_cache_class():
    from transformers import DynamicCache

    return DynamicCache


def _capture_hook(store: dict[int, torch.Tensor], layer_id: int):
    def hook(_module, _inputs, output):
        store[layer_id] = output[0] if isinstance(output, (tuple, list)) else output

    return hook


# ------------------------------------------------------------------------------------------------ drafters


class DraftKVCache:
    """KV cache of a draft's attention layers, handed to the draft as its ``attention`` argument.

    :class:`~eagle_ext.models.draft.DraftAttention` calls :meth:`attend` with its rotated q/k/v; the cache
    appends k/v per layer and lets the new queries attend causally: query ``i`` of ``n`` new ones sits at
    position ``L - n + i`` of the ``L`` cached ones and sees keys ``0..L - n + i``.
    """

    def __init__(self) -> None:
        self._kv: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def length(self) -> int:
        """Cached positions (every layer holds the same number)."""
        for k, _ in self._kv.values():
            return int(k.shape[2])
        return 0

    def attend(self, module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q [1, Hq, n, D]``, ``k, v [1, Hkv, n, D]`` (rotated) -> ``[1, Hq, n, D]``."""
        past = self._kv.get(module)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        self._kv[module] = (k, v)
        n, total = q.shape[2], k.shape[2]
        keys = torch.arange(total, device=q.device)
        visible = keys[None, :] <= torch.arange(total - n, total, device=q.device)[:, None]
        return masked_attention(q, k, v, visible[None, None], scale=module.scale)

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions of every layer."""
        self._kv = {m: (k[:, :, :length], v[:, :, :length]) for m, (k, v) in self._kv.items()}


@dataclass
class Proposal:
    """K draft tokens: ``token_ids`` int64 ``[K]`` (target vocabulary) and, when sampling, ``probs`` fp32
    ``[K, V]``: the distribution each token was drawn from, on the full target vocabulary (zero outside the
    draft vocabulary). ``probs`` is None in greedy mode."""

    token_ids: torch.Tensor
    probs: torch.Tensor | None = None


class Drafter(Protocol):
    """What :func:`speculative_decode` needs from a drafter.

    ``vocab_size``: the target vocabulary size V. ``reset()``: forget the previous sequence.
    ``propose(tokens, aux_new, num_tokens, temperature, generator) -> Proposal``: ``tokens`` int64 ``[N+1]``
    are all committed tokens (the target has processed ``x[0..N-1]``), ``aux_new`` ``[m, num_aux * H]`` the
    aux hidden states of the positions the target verified since the previous call (``N - m .. N-1``; the
    whole prompt on the first call), or None when the target captures none.
    """

    vocab_size: int

    def reset(self) -> None: ...

    def propose(self, tokens: torch.Tensor, aux_new: torch.Tensor | None, num_tokens: int, temperature: float,
                generator: torch.Generator | None) -> Proposal: ...


class _DraftModelDrafter:
    """Shared part of the two drafters: the cache, the slot bookkeeping and the draft-vocab token choice."""

    def __init__(self, draft: nn.Module):
        self.draft = draft.eval().requires_grad_(False)
        config = draft.config
        self.vocab_size = int(config.vocab_size)
        param = draft.lm_head.weight
        ids = torch.arange(config.draft_vocab_size, device=param.device)
        # d2t holds offsets: target id = draft id + d2t[draft id] (only a compressed draft has it).
        self.draft_to_target = ids + draft.d2t.to(param.device) if draft.is_compressed else ids
        self.cache = DraftKVCache()

    def reset(self) -> None:
        self.cache = DraftKVCache()

    def _new_slots(self, tokens: torch.Tensor, aux_new: torch.Tensor | None):
        """Ids, projected hidden states and the first slot of the verified slots not cached yet."""
        if aux_new is None:
            raise ValueError("this drafter reads the target's aux hidden states: build the TargetRunner with "
                             "aux_layer_ids")
        n, s = tokens.numel() - 1, self.cache.length
        if aux_new.dim() != 2 or aux_new.shape[0] != n - s or n - s < 1:
            raise ValueError(f"aux_new must hold the aux states of the {n - s} positions verified since the last "
                             f"call ([{n - s}, num_aux * H]), got shape {list(aux_new.shape)}")
        device = self.draft.lm_head.weight.device
        ids = tokens[s + 1 : n + 1].to(device)
        return ids, self.draft.project_hidden_states(aux_new.to(device)), s

    def _choose(self, logits: torch.Tensor, temperature: float, generator):
        """Draft-vocab logits ``[k, Vd]`` -> (target ids int64 ``[k]``, full-vocab probs ``[k, V]`` or None)."""
        if temperature == 0:
            return self.draft_to_target[logits.argmax(dim=-1)], None
        q = torch.softmax(logits.float() / temperature, dim=-1)
        picked = torch.multinomial(q, 1, generator=generator)[:, 0]
        full = q.new_zeros(q.shape[0], self.vocab_size)
        full[:, self.draft_to_target] = q
        return self.draft_to_target[picked], full


class Eagle3Drafter(_DraftModelDrafter):
    """EAGLE-3 chain drafting with a single-layer :class:`~eagle_ext.models.DraftModel` (see the
    module docstring for the slot frame and the recurrence).

    Raises:
        ValueError: a draft with more than one layer (TTT drafts are single-layer).
    """

    algorithm = "eagle3"  # the registry name of what it drafts for (eagle_ext.algorithms), named in reports

    def __init__(self, draft: nn.Module):
        if len(draft.model.layers) != 1:
            raise ValueError(f"EAGLE-3 chain drafting needs a single-layer draft, this one has "
                             f"{len(draft.model.layers)} layers (a P-EAGLE draft drafts in parallel)")
        super().__init__(draft)

    @torch.no_grad()
    def propose(self, tokens, aux_new, num_tokens, temperature, generator) -> Proposal:
        draft = self.draft
        ids, hidden, s = self._new_slots(tokens, aux_new)
        n = tokens.numel() - 1
        positions = torch.arange(s, n, device=ids.device)
        # forward_positions is the draft forward with explicit positions and attention; for a one-layer draft it
        # computes exactly one TTT step, here over the new verified slots with the cache as attention.
        out = draft.forward_positions(ids[None], hidden[None], positions[None], self.cache)[0, -1:]
        picked, probs = [], []
        for step in range(num_tokens):
            if step:  # TTT step `step` at slot N-1: own previous output + previous draft token, RoPE N-1+step
                position = torch.full((1, 1), n - 1 + step, device=ids.device)
                out = draft.forward_positions(picked[-1][None], out[None], position, self.cache)[0]
            token, prob = self._choose(draft.compute_logits(out), temperature, generator)
            picked.append(token)
            probs.append(prob)
        self.cache.crop(n)
        return Proposal(torch.cat(picked), None if temperature == 0 else torch.cat(probs))


class PEagleDrafter(_DraftModelDrafter):
    """P-EAGLE parallel drafting: one forward of the new verified slots plus ``K - 1`` mask slots.

    Args:
        draft: an :class:`~eagle_ext.models.DraftModel` built with ``parallel_drafting=True``.
        mask_token_id: the token of the mask slots; default ``draft.config.mask_token_id``.

    Raises:
        ValueError: a draft without ``mask_hidden``, or no valid ``mask_token_id``.
    """

    algorithm = "peagle"  # the registry name of what it drafts for (eagle_ext.algorithms), named in reports

    def __init__(self, draft: nn.Module, mask_token_id: int | None = None):
        if not isinstance(getattr(draft, "mask_hidden", None), torch.Tensor):
            raise ValueError("P-EAGLE drafting needs a draft with mask_hidden (parallel_drafting=True)")
        super().__init__(draft)
        if mask_token_id is None:
            mask_token_id = getattr(draft.config, "mask_token_id", None)
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or not (
            0 <= mask_token_id < self.vocab_size
        ):
            raise ValueError(f"mask_token_id must be an int in [0, {self.vocab_size}), got {mask_token_id!r}")
        self.mask_token_id = mask_token_id

    @torch.no_grad()
    def propose(self, tokens, aux_new, num_tokens, temperature, generator) -> Proposal:
        draft = self.draft
        ids, hidden, s = self._new_slots(tokens, aux_new)
        n, extra = tokens.numel() - 1, num_tokens - 1
        if extra:
            mask_hidden = draft.project_hidden_states(draft.mask_hidden.view(1, -1)).to(hidden.dtype)
            ids = torch.cat((ids, ids.new_full((extra,), self.mask_token_id)))
            hidden = torch.cat((hidden, mask_hidden.expand(extra, -1)))
        positions = torch.arange(s, n + extra, device=ids.device)
        out = draft.forward_positions(ids[None], hidden[None], positions[None], self.cache)[0]
        self.cache.crop(n)
        picked, probs = self._choose(draft.compute_logits(out[-num_tokens:]), temperature, generator)
        return Proposal(picked, probs)


def build_drafter(draft: nn.Module, *, mask_token_id: int | None = None) -> Eagle3Drafter | PEagleDrafter:
    """The drafter a draft was trained for: :class:`PEagleDrafter` when ``config.parallel_drafting``, else
    :class:`Eagle3Drafter`. ``mask_token_id`` (P-EAGLE) defaults to the draft config's."""
    if getattr(draft.config, "parallel_drafting", False):
        return PEagleDrafter(draft, mask_token_id)
    return Eagle3Drafter(draft)


# ------------------------------------------------------------------------------------------------ decoding


def accept_draft_tokens(
    draft_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Verify K draft tokens against the target.

    Greedy (``temperature == 0``): accept while ``d[i] == argmax p_i``; the next token is ``argmax p_a``.
    Sampling: with ``p_i = softmax(logits_i / T)``, accept ``d[i]`` with probability ``min(1, p_i(d) / q_i(d))``;
    at the first rejection draw the next token from ``max(0, p_i - q_i)`` renormalised (from ``p_i`` should
    that residual vanish numerically); when all K pass, draw the bonus token from ``p_K``. Either way the
    committed tokens follow the target's own distribution.

    Args:
        draft_ids: int64 ``[K]`` target-vocabulary ids.
        draft_probs: fp32 ``[K, V]`` proposal distributions (required when sampling; ignored when greedy).
        target_logits: ``[K + 1, V]``: row ``i`` is the target's prediction for draft position ``i``, row
            ``K`` the bonus position.
        temperature: >= 0.
        generator: RNG on the logits' device (sampling only).

    Returns:
        ``(accepted a in [0, K], next token id)``.

    Raises:
        ValueError: inconsistent shapes, or sampling without ``draft_probs``.
    """
    k = draft_ids.numel()
    if target_logits.dim() != 2 or target_logits.shape[0] != k + 1:
        raise ValueError(f"target_logits must have shape [K + 1, V] with K = {k}, got {list(target_logits.shape)}")
    if temperature == 0:
        choice = target_logits.argmax(dim=-1)
        accepted = int((draft_ids.to(choice.device) == choice[:k]).to(torch.int64).cumprod(0).sum())
        return accepted, int(choice[accepted])
    if draft_probs is None or tuple(draft_probs.shape) != (k, target_logits.shape[1]):
        got = None if draft_probs is None else list(draft_probs.shape)
        raise ValueError(f"sampling needs draft_probs of shape [K, V] = {[k, target_logits.shape[1]]}, got {got}")
    p = torch.softmax(target_logits.float() / temperature, dim=-1)
    q = draft_probs.to(p.device, torch.float32)
    ids = draft_ids.to(p.device)
    rows = torch.arange(k, device=p.device)
    u = torch.rand(k, generator=generator, device=p.device)
    # u < p/q written without the division (q(d) > 0 for a sampled d; q(d) = 0 accepts whenever p(d) > 0).
    passed = u * q[rows, ids] < p[rows, ids]
    accepted = int(passed.to(torch.int64).cumprod(0).sum())
    if accepted == k:
        return k, int(torch.multinomial(p[k], 1, generator=generator))
    residual = (p[accepted] - q[accepted]).clamp_min(0)
    if not float(residual.sum()) > 0:
        residual = p[accepted]
    return accepted, int(torch.multinomial(residual, 1, generator=generator))


def _sample(logits: torch.Tensor, temperature: float, generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    return int(torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1, generator=generator))


@dataclass
class DecodeResult:
    """One decoded prompt.

    Attributes:
        tokens: the new tokens (at most ``max_new_tokens``, ending at the first stop token if any).
        seconds: wall time of the whole decode, prefill included.
        target_forwards: target forward passes, prefill included.
        num_draft_tokens: K (0 for target-only decoding).
        accepted: accepted draft tokens per verification round (empty for target-only decoding); counted
            before the final truncation to ``max_new_tokens`` / the stop token.
    """

    tokens: list[int]
    seconds: float
    target_forwards: int
    num_draft_tokens: int = 0
    accepted: list[int] = field(default_factory=list)


def _check_decode_args(prompt_ids, max_new_tokens, temperature) -> tuple[torch.Tensor, float]:
    if not isinstance(prompt_ids, torch.Tensor):
        prompt_ids = torch.as_tensor(list(prompt_ids), dtype=torch.int64)
    if prompt_ids.dim() != 1 or prompt_ids.numel() == 0 or prompt_ids.is_floating_point():
        raise ValueError(f"prompt_ids must be a non-empty 1-D integer sequence, got shape {list(prompt_ids.shape)}")
    check_int("max_new_tokens", max_new_tokens, 1)
    return prompt_ids.to(torch.int64), _check_temperature(temperature)


def _finished(new: list[int], max_new_tokens: int, stop: frozenset[int]) -> bool:
    return len(new) >= max_new_tokens or any(t in stop for t in new)


def _truncate(new: list[int], max_new_tokens: int, stop: frozenset[int]) -> list[int]:
    new = new[:max_new_tokens]
    for i, t in enumerate(new):
        if t in stop:
            return new[: i + 1]
    return new


@torch.no_grad()
def target_decode(
    target: TargetRunner,
    prompt_ids: torch.Tensor | Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    stop_token_ids: Sequence[int] = (),
) -> DecodeResult:
    """Target-only decoding (one token per forward) on the same KV-cache path as :func:`speculative_decode`:
    the baseline for losslessness and for tokens/s.

    Args:
        target: the target runner (its aux capture is not used).
        prompt_ids: int ``[P]`` prompt token ids.
        max_new_tokens: >= 1.
        temperature: 0 = greedy; > 0 samples from ``softmax(logits / T)`` with ``generator``.
        stop_token_ids: decoding stops after the first of these tokens (it is kept).

    Raises:
        ValueError: an empty prompt, ``max_new_tokens < 1`` or ``temperature < 0``.
    """
    prompt, temperature = _check_decode_args(prompt_ids, max_new_tokens, temperature)
    stop = frozenset(int(t) for t in stop_token_ids)
    _sync(target.device)
    t0 = time.perf_counter()
    target.reset()
    logits, _ = target.forward(prompt, capture_aux=False)
    new = [_sample(logits[-1], temperature, generator)]
    forwards = 1
    while not _finished(new, max_new_tokens, stop):
        logits, _ = target.forward(torch.tensor(new[-1:], device=target.device), capture_aux=False)
        new.append(_sample(logits[-1], temperature, generator))
        forwards += 1
    _sync(target.device)
    return DecodeResult(_truncate(new, max_new_tokens, stop), time.perf_counter() - t0, forwards)


@torch.no_grad()
def speculative_decode(
    target: TargetRunner,
    drafter: Drafter,
    prompt_ids: torch.Tensor | Sequence[int],
    *,
    num_draft_tokens: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    stop_token_ids: Sequence[int] = (),
) -> DecodeResult:
    """Speculative decoding of one prompt (the round is described in the module docstring).

    Args:
        target: the target runner; it must capture the aux layers the drafter reads.
        drafter: a :class:`Drafter` (:class:`Eagle3Drafter`, :class:`PEagleDrafter`, or any object with the
            same interface).
        prompt_ids: int ``[P]``.
        num_draft_tokens: K >= 1 draft tokens verified per target forward.
        max_new_tokens, temperature, generator, stop_token_ids: as :func:`target_decode`.

    Returns:
        :class:`DecodeResult` with the accepted count of every round.

    Raises:
        ValueError: bad arguments, or a draft whose vocabulary size differs from the target's logits.
    """
    prompt, temperature = _check_decode_args(prompt_ids, max_new_tokens, temperature)
    k = check_int("num_draft_tokens", num_draft_tokens, 1)
    stop = frozenset(int(t) for t in stop_token_ids)
    device = target.device
    _sync(device)
    t0 = time.perf_counter()
    target.reset()
    drafter.reset()
    logits, aux = target.forward(prompt, capture_aux=True)
    if logits.shape[-1] != drafter.vocab_size:
        raise ValueError(f"the draft's vocabulary ({drafter.vocab_size}) differs from the target's logits "
                         f"({logits.shape[-1]}); the draft was trained for another target")
    first = torch.tensor([_sample(logits[-1], temperature, generator)], device=device)
    tokens = torch.cat((prompt.to(device), first))
    new = tokens[-1:].tolist()
    accepted_per_round: list[int] = []
    while not _finished(new, max_new_tokens, stop):
        proposal = drafter.propose(tokens, aux, k, temperature, generator)
        drafted = proposal.token_ids.to(device)
        n = tokens.numel() - 1
        logits, aux = target.forward(torch.cat((tokens[-1:], drafted)), capture_aux=True)
        accepted, next_token = accept_draft_tokens(drafted, proposal.probs, logits, temperature, generator)
        target.crop(n + accepted + 1)
        aux = None if aux is None else aux[: accepted + 1]
        committed = torch.cat((drafted[:accepted], torch.tensor([next_token], device=device)))
        tokens = torch.cat((tokens, committed))
        new.extend(committed.tolist())
        accepted_per_round.append(accepted)
    _sync(device)
    return DecodeResult(_truncate(new, max_new_tokens, stop), time.perf_counter() - t0,
                        1 + len(accepted_per_round), k, accepted_per_round)


# ------------------------------------------------------------------------------------------------ metrics


def summarize_decodes(results: Sequence[DecodeResult]) -> dict[str, Any]:
    """Totals over decodes of one mode.

    Returns:
        ``new_tokens``, ``seconds``, ``tokens_per_s``, ``target_forwards``; for speculative decodes also
        ``num_draft_tokens``, ``rounds``, ``tau`` (tokens committed per verification forward, the bonus token
        included: ``mean(accepted + 1)``; the prefill forward, which yields the first token in both modes, is
        not a round) and ``acceptance_rate`` (per draft position j: the fraction of rounds that accepted
        draft token j, i.e. ``accepted > j``; ``tau = 1 + sum(acceptance_rate)``).

    Raises:
        ValueError: no results, or speculative results with different K.
    """
    if not results:
        raise ValueError("results must hold at least one DecodeResult")
    tokens = sum(len(r.tokens) for r in results)
    seconds = sum(r.seconds for r in results)
    out: dict[str, Any] = {
        "new_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
        "target_forwards": sum(r.target_forwards for r in results),
    }
    ks = {r.num_draft_tokens for r in results}
    if len(ks) != 1:
        raise ValueError(f"results mix different num_draft_tokens {sorted(ks)}")
    k = ks.pop()
    if k:
        accepted = torch.tensor([a for r in results for a in r.accepted], dtype=torch.int64)
        rounds = accepted.numel()
        out["num_draft_tokens"] = k
        out["rounds"] = rounds
        out["tau"] = float((accepted + 1).double().mean()) if rounds else float("nan")
        out["acceptance_rate"] = [float((accepted > j).double().mean()) if rounds else float("nan")
                                  for j in range(k)]
    return out


def _progress(iterable, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="prompt")


def evaluate_speculative(
    target: TargetRunner,
    drafter: Drafter,
    prompts: Sequence[Sequence[int] | torch.Tensor],
    *,
    num_draft_tokens: Sequence[int] = (3,),
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    stop_token_ids: Sequence[int] = (),
    warmup: bool = True,
    progress: bool = True,
    keep_tokens: bool = False,
) -> dict[str, Any]:
    """Decode every prompt target-only and speculatively with every K, in the same run, and report.

    Per prompt the target-only decode runs first, then one speculative decode per K, each from a fresh
    generator seeded with ``seed + prompt index`` (so a rerun reproduces every sample). In greedy mode
    each speculative output is compared with the target-only one (``matches_target``, ``lossless``).
    With ``warmup``, one short untimed decode of each mode runs first (lazy initialisation, kernel caches).

    Returns:
        a JSON-ready dict: ``settings``, ``target_only`` (:func:`summarize_decodes`), ``speculative`` (one
        summary per K, plus ``speedup`` = speculative / target-only tokens/s and ``lossless``) and
        ``prompts`` (per prompt: ``prompt_tokens``, ``target_only`` and per-K summaries; with ``keep_tokens``
        each of these also holds the generated ids, ``tokens``).

    Raises:
        ValueError: no prompts, K < 1, ``max_new_tokens < 1`` or ``temperature < 0`` (before decoding).
    """
    return evaluate_drafters(target, {"draft": drafter}, prompts, num_draft_tokens=num_draft_tokens,
                             max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                             stop_token_ids=stop_token_ids, warmup=warmup, progress=progress,
                             keep_tokens=keep_tokens)["draft"]


def evaluate_drafters(
    target: TargetRunner,
    drafters: Mapping[str, Drafter],
    prompts: Sequence[Sequence[int] | torch.Tensor],
    *,
    num_draft_tokens: Sequence[int] = (3,),
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    stop_token_ids: Sequence[int] = (),
    warmup: bool = True,
    progress: bool = True,
    keep_tokens: bool = False,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_speculative` for several drafters against ONE target-only baseline.

    Per prompt the target-only decode runs once, then every drafter's speculative decodes (every K), so each
    drafter is compared with the same baseline, interleaved in time (load changes hit all modes alike), and
    the target-only decoding is paid once. Every drafter must read the aux layers ``target`` captures.

    Returns:
        ``{name: report}``, one :func:`evaluate_speculative` report per drafter (their ``target_only`` and
        per-prompt ``target_only`` entries are the shared baseline).

    Raises:
        ValueError: no drafter, no prompts, K < 1, ``max_new_tokens < 1`` or ``temperature < 0`` (before
            decoding).
    """
    if not drafters:
        raise ValueError("drafters must name at least one drafter")
    if not prompts:
        raise ValueError("prompts must hold at least one prompt")
    ks = list(num_draft_tokens)
    if not ks:
        raise ValueError("num_draft_tokens must name at least one K")
    for kk in ks:
        check_int("num_draft_tokens", kk, 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    temperature = _check_temperature(temperature)
    check_int("seed", seed, 0)
    device = target.device

    def generator(index: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed + index)

    common = {"temperature": temperature, "stop_token_ids": stop_token_ids}
    if warmup:
        short = min(max_new_tokens, 8)
        target_decode(target, prompts[0], max_new_tokens=short, generator=generator(0), **common)
        for drafter in drafters.values():
            speculative_decode(target, drafter, prompts[0], num_draft_tokens=ks[0], max_new_tokens=short,
                               generator=generator(0), **common)

    baseline, spec, per_prompt = _decode_prompts(target, drafters, prompts, ks, max_new_tokens, generator, common,
                                                 progress=progress, keep_tokens=keep_tokens)
    settings = {"num_prompts": len(prompts), "num_draft_tokens": ks, "max_new_tokens": max_new_tokens,
                "temperature": temperature, "seed": seed, "device": str(device)}
    return _drafter_reports(drafters, baseline, spec, per_prompt, settings)


def _decode_prompts(target, drafters, prompts, ks, max_new_tokens, generator, common, *, progress, keep_tokens):
    """Per prompt: the target-only decode once, then every drafter's speculative decode at every K (interleaved,
    so load changes hit all modes alike). Returns the baseline decodes, ``{name: {K: decodes}}`` and the
    per-prompt entries of each drafter's report."""
    temperature = common["temperature"]
    baseline: list[DecodeResult] = []
    spec: dict[str, dict[int, list[DecodeResult]]] = {name: {kk: [] for kk in ks} for name in drafters}
    per_prompt: dict[str, list[dict[str, Any]]] = {name: [] for name in drafters}
    for i, prompt in _progress(enumerate(prompts), len(prompts), progress, "eval"):
        base = target_decode(target, prompt, max_new_tokens=max_new_tokens, generator=generator(i), **common)
        baseline.append(base)
        for name, drafter in drafters.items():
            entry: dict[str, Any] = {"prompt_tokens": len(prompt), "target_only": summarize_decodes([base]),
                                     "speculative": []}
            if keep_tokens:  # the generated ids (the caller may decode them to text)
                entry["target_only"]["tokens"] = list(base.tokens)
            for kk in ks:
                res = speculative_decode(target, drafter, prompt, num_draft_tokens=kk,
                                         max_new_tokens=max_new_tokens, generator=generator(i), **common)
                spec[name][kk].append(res)
                summary = summarize_decodes([res])
                summary["matches_target"] = res.tokens == base.tokens if temperature == 0 else None
                if keep_tokens:
                    summary["tokens"] = list(res.tokens)
                entry["speculative"].append(summary)
            per_prompt[name].append(entry)
    return baseline, spec, per_prompt


def _drafter_reports(drafters, baseline, spec, per_prompt, settings) -> dict[str, dict[str, Any]]:
    """One :func:`evaluate_speculative` report per drafter against the shared target-only ``baseline``."""
    temperature = settings["temperature"]
    target_summary = summarize_decodes(baseline)
    reports = {}
    for name, drafter in drafters.items():
        spec_summaries = []
        for kk in settings["num_draft_tokens"]:
            summary = summarize_decodes(spec[name][kk])
            summary["speedup"] = summary["tokens_per_s"] / target_summary["tokens_per_s"]
            matching = sum(r.tokens == b.tokens for r, b in zip(spec[name][kk], baseline, strict=True))
            # greedy only: prompts whose speculative output equals the target-only one, token for token
            summary["matching_prompts"] = matching if temperature == 0 else None
            summary["lossless"] = matching == len(baseline) if temperature == 0 else None
            spec_summaries.append(summary)
        reports[name] = {
            "settings": {**settings,
                         "algorithm": getattr(drafter, "algorithm", type(drafter).__name__)},
            "target_only": target_summary,
            "speculative": spec_summaries,
            "prompts": per_prompt[name],
        }
    return reports


def lossless_label(summary: dict[str, Any], num_prompts: int) -> str:
    """``yes`` when every greedy speculative output equalled the target-only one, else ``NO m/n`` (the prompts
    that matched). In bf16 a K-token verify and a one-token step round differently, so near-ties can part the
    two greedy outputs although every committed token is the verifying target's argmax; fp32 matches."""
    if summary["lossless"]:
        return "yes"
    matching = summary.get("matching_prompts")
    return "NO" if matching is None else f"NO {matching}/{num_prompts}"


def format_report(report: dict[str, Any]) -> str:
    """The printed table of an :func:`evaluate_speculative` report."""
    s = report["settings"]
    engine = f"engine={s['engine']}" + (f" {s['vllm_version']}" if s.get("vllm_version") else "") + ", " \
        if s.get("engine") else ""
    lines = [
        f"{engine}{s['num_prompts']} prompts, max_new_tokens={s['max_new_tokens']}, temperature={s['temperature']}, "
        f"algorithm={s['algorithm']}, device={s['device']}",
        f"{'mode':<12} {'K':>3} {'tau':>6} {'tok/s':>9} {'speed-up':>9} {'lossless':>9}  acceptance per position",
    ]
    base = report["target_only"]
    lines.append(f"{'target-only':<12} {'-':>3} {1.0:>6.2f} {base['tokens_per_s']:>9.1f} {1.0:>8.2f}x {'-':>9}  -")
    for r in report["speculative"]:
        lossless = "-" if r["lossless"] is None else lossless_label(r, s["num_prompts"])
        rates = " ".join(f"{x:.2f}" for x in r["acceptance_rate"])
        lines.append(f"{'speculative':<12} {r['num_draft_tokens']:>3} {r['tau']:>6.2f} {r['tokens_per_s']:>9.1f} "
                     f"{r['speedup']:>8.2f}x {lossless:>9}  {rates}")
    return "\n".join(lines)
