"""P-EAGLE (parallel drafting) trainer module: one parallel draft forward over a flat COD sequence.

Per row of the (shifted, see below) batch:

1. COD indices ``(anchor, depth)`` from :func:`eagle_ext.ops.cod.generate_cod_sample_indices` on the row's
   loss mask, with the row's document ids so no chain leaves the real tokens (or precomputed indices, e.g.
   from dataloader workers: ``forward(..., cod_indices=...)``). The reference position of an element is
   ``orig = anchor + depth``.
2. Flat inputs: depth-0 elements take the real token ``input_ids[orig]`` and ``fc(aux[orig])``; deeper
   elements take ``mask_token_id`` and ``fc(mask_hidden)``. RoPE positions are ``orig``.
3. One draft forward (:meth:`DraftModel.forward_positions`) under the COD mask: a FlexAttention
   ``BlockMask`` built directly by :func:`eagle_ext.ops.cod_block_mask.build_cod_block_mask` on CUDA, a dense
   bool mask on CPU (FlexAttention has no CPU backward; the dense path is also the reference).
4. ``KL(target || draft)`` over the draft vocabulary through :func:`eagle_ext.ops.fused_linear_kl`
   (``mode="kl"``; the ``[n, Vd]`` draft logits are never materialised on the fused paths), summed over the
   supervised elements (``loss_mask[orig]``, depth 0 included, no out-of-draft-vocab filter) and divided by
   ONE count over the whole batch, so deeper depths (fewer elements) weigh less. No ``0.8^d`` schedule.

Inputs follow the EAGLE-3 alignment (the target capture's output): ``input_ids``, ``loss_mask`` and
``target_logits`` are shifted left by one; ``aux_hidden_states`` and ``attention_mask`` are not.

Sequence partitioning (P-EAGLE Algorithm 1): :meth:`PEagleTrainerModule.build_peagle_plan` samples COD once
per row and splits the elements into ``sequence_partitions`` segments (:func:`assign_cod_segments`); each
segment also reads every depth-0 element up to its right boundary (causal completion), so its queries see
exactly the keys they see in the flat forward and the segment losses (each divided by the batch's total
count) sum to the flat loss, with the same gradients. The caller runs one forward + backward per segment
(:func:`run_partitioned_step` does it, with ``no_sync`` for all but the last segment under DDP), so only
one segment's activations are alive at a time.

Differences from the reference recipe, on purpose: counters are int64 and the loss stays fp32 (the recipe
casts it to bf16); COD never emits a negative anchor or a chain across documents; per-depth accuracy counts
are reported; precomputed COD indices in any order are put in depth-major order (what the BlockMask builder
needs) before ids, hidden states and targets are gathered, so all of them share one order.

Host syncs: all per-row index work (COD sampling, validation, ordering, segment assignment, supervised
counts, the BlockMask's per-element summaries) runs on host copies: the loss and attention masks are read
back once per batch (one device-to-host copy in ``forward`` and in ``build_peagle_plan``, none on CPU), COD
indices are made on the host (or come from dataloader workers, on the host), and everything the device
needs is sent with asynchronous host-to-device copies. FlexAttention runs at bucketed lengths
(:func:`eagle_ext.models.attention.flex_bucket_length`), so the compiled kernel sees a handful of shapes.
What is left per step is listed in docs/ops.md ("Host syncs").
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from eagle_ext._checks import check_int, check_ratio
from eagle_ext.ops._transfer import to_device_async
from eagle_ext.ops.cod import assign_cod_segments, generate_cod_sample_indices, resolve_seed
from eagle_ext.ops.cod_mask import depth_major_order

__all__ = ["PEagleTrainerModule", "PEaglePlan", "PEagleUnit", "PEagleStepMetrics", "run_partitioned_step"]

ATTENTION_BACKENDS = ("auto", "flex", "dense")


@dataclass
class PEagleStepMetrics:
    """Metrics of one P-EAGLE forward (a whole batch, or one segment of a plan).

    Attributes:
        loss: fp32 scalar with grad: ``sum KL / total count`` (a segment: its share of the batch loss).
        accuracy: fp32 scalar, detached: draft argmax == target argmax over the supervised elements.
        valid_tokens: int64 scalar: supervised elements charged by this forward.
        depth_correct: int64 ``[num_depths]``: correct supervised elements per depth.
        depth_valid: int64 ``[num_depths]``: supervised elements per depth.
    """

    loss: torch.Tensor
    accuracy: torch.Tensor
    valid_tokens: torch.Tensor
    depth_correct: torch.Tensor
    depth_valid: torch.Tensor

    @property
    def depth_accuracy(self) -> list[float]:
        """Accuracy per depth (0 where a depth has no supervised element)."""
        return (self.depth_correct.double() / self.depth_valid.clamp_min(1).double()).tolist()


class PEagleUnit:
    """One (row, segment) of a plan: the elements the segment's forward runs over.

    ``anchor``/``depth`` int64 ``[m]`` (depth-major order), ``loss_positions`` bool ``[m]`` (the segment's
    own supervised elements; causal-completion context is False), ``document_ids`` int64 ``[L]``; all on
    the host (CPU), which is where the segment's index work runs.
    """

    __slots__ = ("row", "segment", "anchor", "depth", "loss_positions", "document_ids")

    def __init__(self, row, segment, anchor, depth, loss_positions, document_ids):
        self.row, self.segment = row, segment
        self.anchor, self.depth = anchor, depth
        self.loss_positions, self.document_ids = loss_positions, document_ids


class PEaglePlan:
    """A sequence-partitioning plan: one unit per non-empty (row, segment) and the batch's total count.

    A plain class on purpose: DistributedDataParallel scatters tensors and built-in containers found in
    ``forward``'s arguments; an object of this class passes through untouched.
    """

    __slots__ = ("units", "total_den", "num_rows", "num_segments")

    def __init__(self, units: list[PEagleUnit], total_den: torch.Tensor, num_rows: int, num_segments: int):
        self.units, self.total_den = units, total_den
        self.num_rows, self.num_segments = num_rows, num_segments

    def __len__(self) -> int:
        return len(self.units)



def row_document_ids(attention_mask_row: torch.Tensor) -> torch.Tensor:
    """int64 ``[L]``: 0 on real tokens, -1 on padding (an unpacked row is one document)."""
    return torch.where(attention_mask_row != 0, 0, -1).to(torch.int64)


def _host_rows(loss_mask: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Host copies of a batch's row structure: supervised bool ``[B, L]`` and document ids int64 ``[B, L]``.
    One device-to-host copy for both (none when the masks are on the host)."""
    both = torch.stack([loss_mask.detach() != 0, attention_mask.detach() != 0]).cpu()
    return both[0], row_document_ids(both[1])


class PEagleTrainerModule(nn.Module):
    """Draft-side P-EAGLE trainer.

    Args:
        draft_model: an :class:`~eagle_ext.models.DraftModel` built with ``parallel_drafting=True``
            (it has ``mask_hidden``).
        selected_token_ids: int64 ``[Vd]`` draft id -> target id (row i of ``lm_head``).
        selected_token_mask: bool ``[V]`` membership of the target ids in the draft vocab.
        num_depths: K >= 1 parallel depths.
        mask_token_id: token id of depth >= 1 slots, in ``[0, V)`` (and equal to the draft config's).
        down_sample_ratio, down_sample_ratio_min: COD ratios in (0, 1].
        sequence_partitions: S >= 1 segments for :meth:`build_peagle_plan`.
        max_anchors: optional cap on the depth-1 pool per row (see ``generate_cod_sample_indices``).
        loss_impl: ``fused_linear_kl`` implementation: ``"auto"`` (Triton on CUDA, chunked elsewhere),
            ``"triton"``, ``"chunked"`` or ``"reference"``.
        attention: ``"auto"`` (FlexAttention with a directly built BlockMask on CUDA, dense mask on CPU),
            ``"flex"`` or ``"dense"``.
        block_size: BlockMask block size.
        generator: optional ``torch.Generator`` the per-row COD seeds are drawn from (default: torch's
            global RNG, so ``torch.manual_seed`` reproduces a run).

    Raises:
        ValueError: a draft without ``mask_hidden``, or any argument out of range (the message names it).
    """

    def __init__(
        self,
        draft_model: nn.Module,
        *,
        selected_token_ids: torch.Tensor,
        selected_token_mask: torch.Tensor,
        num_depths: int,
        mask_token_id: int,
        down_sample_ratio: float = 0.7,
        down_sample_ratio_min: float = 0.2,
        sequence_partitions: int = 1,
        max_anchors: int | None = None,
        loss_impl: str = "auto",
        attention: str = "auto",
        block_size: int = 128,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(getattr(draft_model, "mask_hidden", None), torch.Tensor):
            raise ValueError(
                "draft_model has no mask_hidden: build it with parallel_drafting=True "
                "(DraftModel.from_target_config(..., parallel_drafting=True, mask_token_id=...))"
            )
        self.num_depths = check_int("num_depths", num_depths, 1)
        self.sequence_partitions = check_int("sequence_partitions", sequence_partitions, 1)
        self.down_sample_ratio = check_ratio("down_sample_ratio", down_sample_ratio)
        self.down_sample_ratio_min = check_ratio("down_sample_ratio_min", down_sample_ratio_min)
        self.max_anchors = None if max_anchors is None else check_int("max_anchors", max_anchors, 1)
        self.block_size = check_int("block_size", block_size, 16)
        vocab = int(draft_model.config.vocab_size)
        check_int("mask_token_id", mask_token_id, 0)
        if mask_token_id >= vocab:
            raise ValueError(f"mask_token_id must be in [0, {vocab}), got {mask_token_id}")
        configured = getattr(draft_model.config, "mask_token_id", None)
        if configured is not None and configured != mask_token_id:
            raise ValueError(
                f"mask_token_id ({mask_token_id}) differs from the draft config's mask_token_id ({configured})"
            )
        self.mask_token_id = mask_token_id
        from eagle_ext.ops.linear_kl import IMPLS

        if loss_impl not in IMPLS:
            raise ValueError(f"loss_impl must be one of {IMPLS}, got {loss_impl!r}")
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
        self.loss_impl, self.attention = loss_impl, attention
        vd = int(draft_model.lm_head.weight.shape[0])
        if selected_token_ids.dim() != 1 or selected_token_ids.numel() != vd:
            raise ValueError(
                f"selected_token_ids must have shape [draft_vocab_size={vd}], got {list(selected_token_ids.shape)}"
            )
        if selected_token_mask.dim() != 1 or selected_token_mask.numel() != vocab:
            raise ValueError(
                f"selected_token_mask must have shape [vocab_size={vocab}], got {list(selected_token_mask.shape)}"
            )
        self.draft_model = draft_model
        self.register_buffer("selected_token_ids", selected_token_ids.detach().to(torch.int64).clone())
        self.register_buffer("selected_token_mask", selected_token_mask.detach().to(torch.bool).clone())
        self.generator = generator

    # ------------------------------------------------------------------------------------ sampling

    def _check_batch(self, input_ids, attention_mask, loss_mask, aux_hidden_states, target_logits) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [B, T], got {list(input_ids.shape)}")
        b, t = input_ids.shape
        for name, x in (("attention_mask", attention_mask), ("loss_mask", loss_mask)):
            if tuple(x.shape) != (b, t):
                raise ValueError(f"{name} must have shape [B, T] = {[b, t]}, got {list(x.shape)}")
        if aux_hidden_states.dim() != 3 or tuple(aux_hidden_states.shape[:2]) != (b, t):
            raise ValueError(f"aux_hidden_states must have shape [B, T, 3H] with B, T = {b}, {t}, "
                             f"got {list(aux_hidden_states.shape)}")
        vocab = int(self.draft_model.config.vocab_size)
        if target_logits is not None and tuple(target_logits.shape) != (b, t, vocab):
            raise ValueError(f"target_logits must have shape [B, T, V] = {[b, t, vocab]}, "
                             f"got {list(target_logits.shape)}")

    def sample_row(self, loss_mask_row: torch.Tensor, document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """COD ``(anchor, depth)`` for one row (shifted loss mask ``[L]``, document ids ``[L]``)."""
        return generate_cod_sample_indices(
            loss_mask_row.numel(), loss_mask_row, self.num_depths, self.down_sample_ratio,
            self.down_sample_ratio_min, document_ids=document_ids, max_anchors=self.max_anchors,
            seed=resolve_seed(generator=self.generator),
        )

    def _row_indices(self, b, supervised, document_ids, cod_indices):
        """Host ``(anchor, depth)`` of row ``b`` in depth-major order: sampled on the row's host masks, or
        ``cod_indices[b]`` validated and, if needed, stably reordered (:func:`depth_major_order`)."""
        if cod_indices is None:
            return self.sample_row(supervised[b], document_ids)
        anchor, depth = cod_indices[b]
        anchor = anchor.detach().to(device="cpu", dtype=torch.int64)  # a no-op for worker-made indices
        depth = depth.detach().to(device="cpu", dtype=torch.int64)
        length = supervised.shape[1]
        if anchor.dim() != 1 or anchor.shape != depth.shape:
            raise ValueError(f"cod_indices[{b}] must be two equally long 1-D tensors, got shapes "
                             f"{list(anchor.shape)} and {list(depth.shape)}")
        ref = anchor + depth
        if anchor.numel() and (int(anchor.min()) < 0 or int(ref.max()) >= length or int(depth.min()) < 0):
            raise ValueError(f"cod_indices[{b}] must satisfy 0 <= anchor and anchor + depth < {length}")
        if anchor.numel() and int(depth.max()) >= self.num_depths:
            raise ValueError(f"cod_indices[{b}] has depth {int(depth.max())} >= num_depths={self.num_depths}")
        try:
            perm = depth_major_order(anchor, depth, length)
        except ValueError as exc:
            raise ValueError(f"cod_indices[{b}]: {exc}") from None
        if perm is not None:
            anchor, depth = anchor[perm], depth[perm]
        return anchor, depth

    def _check_cod_indices(self, cod_indices, batch_size: int) -> None:
        if cod_indices is not None and (not isinstance(cod_indices, Sequence) or len(cod_indices) != batch_size):
            raise ValueError(f"cod_indices must be a sequence of {batch_size} (anchor, depth) pairs, "
                             f"got {type(cod_indices).__name__}")

    @torch.no_grad()
    def build_peagle_plan(
        self,
        loss_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cod_indices: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        num_segments: int | None = None,
        device: torch.device | str | None = None,
    ) -> PEaglePlan:
        """Sample COD once per row and split the elements into segments (Algorithm 1 + causal completion).

        Args:
            loss_mask: ``[B, L]`` shifted loss mask (the one passed to :meth:`forward`).
            attention_mask: ``[B, L]`` real-token mask (default: all real).
            cod_indices: optional precomputed per-row ``(anchor, depth)``.
            num_segments: S (default ``sequence_partitions``).
            device: where ``total_den`` lives (default: ``loss_mask``'s device). Pass host masks and the
                training device to build the plan without any host sync: the recipe does, with host copies
                of the collated masks taken before the target forward. Device masks cost one
                device-to-host copy, which waits for every kernel queued before it.

        Returns:
            :class:`PEaglePlan`; ``total_den`` is the batch's supervised-element count (fp32, >= 1).
        """
        if loss_mask.dim() != 2:
            raise ValueError(f"loss_mask must have shape [B, L], got {list(loss_mask.shape)}")
        b, length = loss_mask.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(loss_mask)
        elif tuple(attention_mask.shape) != (b, length):
            raise ValueError(f"attention_mask must have shape [B, L] = {[b, length]}, got {list(attention_mask.shape)}")
        segments = self.sequence_partitions if num_segments is None else check_int("num_segments", num_segments, 1)
        self._check_cod_indices(cod_indices, b)
        supervised_rows, doc_rows = _host_rows(loss_mask, attention_mask)
        units: list[PEagleUnit] = []
        total = 0
        for row in range(b):
            doc = doc_rows[row]
            anchor, depth = self._row_indices(row, supervised_rows, doc, cod_indices)
            supervised = supervised_rows[row, anchor + depth]
            total += int(supervised.sum())
            seg = assign_cod_segments(anchor, depth, length, segments)
            for s in range(segments):
                owned = seg == s
                in_seg = owned | ((depth == 0) & (seg <= s))
                if not bool(owned.any()):
                    continue
                units.append(PEagleUnit(row, s, anchor[in_seg], depth[in_seg], (owned & supervised)[in_seg], doc))
        # torch.full writes the value on the device (no host-to-device copy to wait for).
        total_den = torch.full((), float(max(total, 1)), dtype=torch.float32,
                               device=loss_mask.device if device is None else device)
        return PEaglePlan(units, total_den, b, segments)

    # ------------------------------------------------------------------------------------ forward

    def _use_flex(self, device: torch.device) -> bool:
        if self.attention == "auto":
            return device.type == "cuda"
        return self.attention == "flex"

    def _attention_mask(self, anchor, depth, document_ids, device: torch.device):
        """The COD mask of host indices, on ``device``: a BlockMask padded to the flex length bucket, or
        the dense ``[1, 1, n, n]`` bool mask."""
        if self._use_flex(device):
            from eagle_ext.models.attention import flex_bucket_length
            from eagle_ext.ops.cod_block_mask import build_cod_block_mask

            # Host indices: validation (order, documents, ranges) is free and the build has no sync.
            return build_cod_block_mask(
                anchor, depth, document_ids, block_size=self.block_size, validate=True, device=device,
                pad_to=flex_bucket_length(anchor.numel(), self.block_size),
            )
        from eagle_ext.ops.cod_mask import dense_cod_mask

        dense_inputs = (to_device_async(t, device) for t in (anchor, depth, document_ids))
        return dense_cod_mask(*dense_inputs, validate=False)[None, None]  # indices checked on the host

    def _unit_loss(self, row, anchor, depth, loss_positions, document_ids, input_ids, aux_hidden_states,
                   target_logits):
        """``(sum KL, correct bool [m], depth int64 [m])`` on the batch's device for one row's elements,
        given as host tensors in depth-major order (``loss_positions`` bool ``[m]``)."""
        from eagle_ext.ops.linear_kl import fused_linear_kl

        draft = self.draft_model
        device = input_ids.device
        is_ctx = depth == 0
        n_ctx = int(is_ctx.sum())  # host tensors: no sync
        if n_ctx and not bool(is_ctx[:n_ctx].all()):
            raise ValueError("COD elements must be in depth-major order (all depth-0 elements first)")
        orig = to_device_async(anchor + depth, device)
        loss_positions = to_device_async(loss_positions, device)
        ids = input_ids[row].index_select(0, orig)
        ids[n_ctx:] = self.mask_token_id
        context = draft.project_hidden_states(aux_hidden_states[row].index_select(0, orig[:n_ctx]))
        # mask_hidden stays in the graph even when K = 1 (zero gradient), so DDP sees every parameter used.
        mask_hidden = draft.project_hidden_states(draft.mask_hidden.view(1, -1)).to(context.dtype)
        hidden_in = torch.cat([context, mask_hidden.expand(orig.numel() - n_ctx, -1)], dim=0)
        hidden = draft.forward_positions(
            ids[None], hidden_in[None], orig[None], self._attention_mask(anchor, depth, document_ids, device)
        )[0]
        target = target_logits[row].index_select(-1, self.selected_token_ids).index_select(0, orig)
        res = fused_linear_kl(
            draft.lm_head_input(hidden), draft.lm_head.weight, loss_positions,
            target_logits=target, mode="kl", impl=self.loss_impl,
        )
        correct = (res.draft_argmax == res.target_argmax) & loss_positions
        return res.loss.to(torch.float32), correct, to_device_async(depth, device)

    def _metrics(self, loss, device_depths, corrects, host_depths, valids) -> PEagleStepMetrics:
        """Per-depth counts: ``corrects`` (bool, device) against ``device_depths``; ``valids`` (supervised
        bool, host) against ``host_depths``, counted on the host and sent over asynchronously."""
        k = self.num_depths
        depth_correct = torch.zeros(k, dtype=torch.int64, device=loss.device)
        for depth, correct in zip(device_depths, corrects, strict=True):
            depth_correct.index_add_(0, depth, correct.to(torch.int64))  # no boolean indexing: no sync
        depth_valid = torch.zeros(k, dtype=torch.int64)
        for depth, valid in zip(host_depths, valids, strict=True):
            depth_valid += torch.bincount(depth[valid], minlength=k)[:k]
        depth_valid = to_device_async(depth_valid, loss.device)
        valid_tokens = depth_valid.sum()
        accuracy = depth_correct.sum().to(torch.float32) / valid_tokens.clamp_min(1).to(torch.float32)
        return PEagleStepMetrics(loss, accuracy.detach(), valid_tokens, depth_correct, depth_valid)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_mask: torch.Tensor,
        aux_hidden_states: torch.Tensor,
        target_logits: torch.Tensor,
        *,
        peagle_segment: tuple[PEaglePlan, int] | None = None,
        cod_indices: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> PEagleStepMetrics:
        """P-EAGLE loss for a batch, or for one segment of a plan.

        Args:
            input_ids: int64 ``[B, L]`` target ids shifted left by one.
            attention_mask: ``[B, L]`` real-token mask (unshifted).
            loss_mask: ``[B, L]`` shifted loss mask.
            aux_hidden_states: ``[B, L, 3H_t]`` (unshifted).
            target_logits: ``[B, L, V]`` full-vocab target logits shifted left by one.
            peagle_segment: ``(plan, i)`` from :meth:`build_peagle_plan`: compute only unit ``i``'s share
                ``num / plan.total_den`` (the caller back-propagates each segment).
            cod_indices: optional per-row precomputed ``(anchor, depth)`` (flat forward only; a plan carries
                its own).

        Returns:
            :class:`PEagleStepMetrics`. A batch without supervised elements gives a finite zero loss.
        """
        self._check_batch(input_ids, attention_mask, loss_mask, aux_hidden_states, target_logits)
        if peagle_segment is not None:
            plan, index = peagle_segment
            if not isinstance(plan, PEaglePlan):
                raise TypeError(f"peagle_segment must be (PEaglePlan, int), got {type(plan).__name__}")
            if cod_indices is not None:
                raise ValueError("pass cod_indices to build_peagle_plan, not with peagle_segment")
            if plan.num_rows != input_ids.shape[0]:
                raise ValueError(f"the plan was built for {plan.num_rows} rows, the batch has {input_ids.shape[0]}")
            unit = plan.units[index]
            num, correct, depth = self._unit_loss(
                unit.row, unit.anchor, unit.depth, unit.loss_positions, unit.document_ids,
                input_ids, aux_hidden_states, target_logits,
            )
            loss = num / plan.total_den.to(num.device)
            return self._metrics(loss, [depth], [correct], [unit.depth], [unit.loss_positions])

        batch = input_ids.shape[0]
        self._check_cod_indices(cod_indices, batch)
        supervised_rows, doc_rows = _host_rows(loss_mask, attention_mask)
        total_num = None
        den = 0
        device_depths, corrects, host_depths, valids = [], [], [], []
        for row in range(batch):
            anchor, depth = self._row_indices(row, supervised_rows, doc_rows[row], cod_indices)
            supervised = supervised_rows[row, anchor + depth]
            num, correct, depth_on_device = self._unit_loss(
                row, anchor, depth, supervised, doc_rows[row], input_ids, aux_hidden_states, target_logits
            )
            total_num = num if total_num is None else total_num + num
            den += int(supervised.sum())  # host tensor: no sync
            device_depths.append(depth_on_device)
            corrects.append(correct)
            host_depths.append(depth)
            valids.append(supervised)
        loss = total_num / max(den, 1)
        return self._metrics(loss, device_depths, corrects, host_depths, valids)


def run_partitioned_step(
    module: nn.Module,
    plan: PEaglePlan,
    batch: dict[str, torch.Tensor],
    *,
    loss_scale: float = 1.0,
) -> PEagleStepMetrics:
    """Forward + backward of every segment of ``plan``; return the summed metrics.

    ``module`` is the :class:`PEagleTrainerModule` or its ``DistributedDataParallel`` wrapper; under DDP all
    segments but the last run in ``no_sync()`` so gradients are all-reduced once. ``loss_scale`` multiplies
    each segment loss before backward (e.g. ``1 / grad_accumulation_steps``). A plan without units still
    runs one backward of ``0 * sum(params)`` so DDP's collectives stay aligned across ranks.

    Args:
        batch: the keyword arguments of :meth:`PEagleTrainerModule.forward` (``input_ids``,
            ``attention_mask``, ``loss_mask``, ``aux_hidden_states``, ``target_logits``).
    """
    inner = module.module if hasattr(module, "no_sync") and hasattr(module, "module") else module
    if not plan.units:
        params = [p for p in module.parameters() if p.requires_grad]
        (sum(p.sum() for p in params) * 0.0).backward()
        zero = torch.zeros((), dtype=torch.int64, device=params[0].device if params else "cpu")
        k = inner.num_depths
        return PEagleStepMetrics(torch.zeros((), device=zero.device), torch.zeros((), device=zero.device), zero,
                                 torch.zeros(k, dtype=torch.int64, device=zero.device),
                                 torch.zeros(k, dtype=torch.int64, device=zero.device))
    loss_total = correct = valid = None
    depth_correct = depth_valid = None
    last = len(plan.units) - 1
    for i in range(len(plan.units)):
        sync_off = module.no_sync() if hasattr(module, "no_sync") and i < last else contextlib.nullcontext()
        with sync_off:
            metrics = module(**batch, peagle_segment=(plan, i))
            (metrics.loss * loss_scale).backward()
        loss_total = metrics.loss.detach() if loss_total is None else loss_total + metrics.loss.detach()
        depth_correct = metrics.depth_correct if depth_correct is None else depth_correct + metrics.depth_correct
        depth_valid = metrics.depth_valid if depth_valid is None else depth_valid + metrics.depth_valid
    valid = depth_valid.sum()
    correct = depth_correct.sum()
    accuracy = correct.to(torch.float32) / valid.clamp_min(1).to(torch.float32)
    return PEagleStepMetrics(loss_total, accuracy, valid, depth_correct, depth_valid)
