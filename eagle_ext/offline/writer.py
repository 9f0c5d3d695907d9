"""``precompute``: run the frozen target once over the data and write the offline EAGLE-3 cache.

In the order it runs (:func:`precompute_cache`):

1. every option is validated (sizes, dtype, paths, device) and the output directory checked (existing
   shards without ``resume`` are an error) before anything is loaded;
2. the target's tokenizer and config; the padded, **unshuffled** dataloader
   (:func:`eagle_ext.data.build_dataloader`); the draft vocabulary
   (:func:`eagle_ext.data.load_or_build_eagle3_token_mapping`, cached in the output directory);
3. the manifest (:func:`eagle_ext.offline.manifest.build_manifest`); with ``resume`` it must equal the recorded
   one, else the run stops listing the differing fields;
4. the target is loaded; rank 0 writes ``target_config.json``, ``target_embeddings.safetensors`` and the
   manifest, then every rank starts writing shards (a barrier in between);
5. rank ``r`` of ``W`` writes shards ``r, r + W, ...`` that are not finished yet, each through
   ``target.generate_batch`` and the same :func:`eagle_ext.eagle3.compute_target_distribution` as online
   training, atomically, followed by its checksum sidecar.

Storage layout ("trimmed"): a sample is stored only up to its real length ``L = attention_mask.sum()``
(samples are right-padded, so positions ``>= L`` are padding and cost nothing on disk). A shard with ``n``
samples and ``N = sum L`` tokens holds, concatenated along the token axis:

- ``offsets`` int64 ``[n + 1]`` (sample ``j`` is tokens ``offsets[j]:offsets[j + 1]``), ``sample_index``
  int64 ``[n]`` (dataset index of each sample);
- ``input_ids`` int64 ``[N]`` and ``loss_mask`` uint8 ``[N]`` (shifted left by one, as the trainer reads them),
  ``attention_mask`` uint8 ``[N]`` (unshifted);
- ``aux_hidden_states`` ``[N, 3H]`` in the cache dtype (unshifted);
- ``position_mask`` bool ``[N]``;
- ``target_probs`` ``[N, Vd]`` (cache dtype; lossless), or with ``target_probs_topk = k``:
  ``target_probs_values`` ``[N, k]`` (cache dtype, renormalised to sum to 1 when ``k < Vd``) and
  ``target_probs_indices`` int32 ``[N, k]``. ``k >= Vd`` keeps every column without renormalising, so it
  reads back exactly like the lossless form.

The reader (:mod:`eagle_ext.offline.reader`) pads back to ``seq_length`` exactly as the live loader does.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from eagle_ext.eagle3.targets import compute_target_distribution
from eagle_ext.offline.manifest import (
    DRAFT_VOCAB_FILE,
    EMBEDDINGS_FILE,
    FORMAT,
    MANIFEST_FILE,
    TARGET_CONFIG_FILE,
    CacheIntegrityError,
    build_manifest,
    cache_dtype,
    check_file,
    existing_shard_files,
    finished_shards,
    manifest_differences,
    read_cache_manifest,
    shard_name,
    shard_sample_count,
    sidecar_name,
    write_manifest,
    write_sidecar,
)
from eagle_ext.offline.options import PrecomputeOptions, validate_precompute_options

logger = logging.getLogger(__name__)

__all__ = ["compute_cache_samples", "precompute_cache", "write_shard"]



def _check_output_dir(opts: PrecomputeOptions) -> set[int]:
    """Finished shards to keep (file, sidecar and size agree). Raises when shards exist without ``resume``, or
    shards without a manifest."""
    present = existing_shard_files(opts.output_dir)
    if present and not opts.resume:
        names = [shard_name(i) for i in sorted(present)][:5]
        raise FileExistsError(
            f"output_dir (--output-dir) {opts.output_dir!r} already holds {len(present)} shard(s) ({', '.join(names)}"
            f"{', ...' if len(present) > 5 else ''}); pass --resume to continue that cache or choose an empty directory"
        )
    if present and not os.path.isfile(os.path.join(opts.output_dir, MANIFEST_FILE)):
        raise FileExistsError(
            f"output_dir (--output-dir) {opts.output_dir!r} holds shards but no {MANIFEST_FILE}; cannot tell what "
            "produced them, so --resume refuses; choose an empty directory"
        )
    if not opts.resume:
        return set()
    done = set()
    for i in sorted(finished_shards(opts.output_dir)):
        try:  # a truncated shard is redone; bit rot needs a full read: `precompute --verify` finds it
            check_file(opts.output_dir, shard_name(i), full=False)
            done.add(i)
        except CacheIntegrityError as exc:
            logger.warning("--resume rewrites %s", exc)
    return done


# ---------------------------------------------------------------------------------------------- tensors


@torch.no_grad()
def compute_cache_samples(
    target_batch: Any,
    selected_token_ids: torch.Tensor,
    selected_token_mask: torch.Tensor,
    *,
    dtype: torch.dtype,
    topk: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """Turn one :class:`eagle_ext.models.Eagle3TargetBatch` (live, with ``target_logits``) into the per-sample
    tensors a shard stores, trimmed to each sample's real length (layout: module docstring).

    The supervision comes from :func:`eagle_ext.eagle3.compute_target_distribution`, the function the online
    trainer calls, so a cached ``target_probs`` equals the live one up to the cache dtype.

    Args:
        target_batch: padded rows (``attention_mask`` ``[B, T]`` a prefix of ones per row).
        selected_token_ids: int64 ``[Vd]``; selected_token_mask: bool ``[V]``.
        dtype: cache dtype of ``aux_hidden_states`` and the probabilities.
        topk: 0 = lossless ``target_probs``; else top-``k`` values + int32 indices (``k >= Vd`` keeps all).

    Returns:
        ``B`` dicts of CPU tensors, each ``[L_i, ...]``.

    Raises:
        ValueError: packed rows, or an ``attention_mask`` that is not right padding.
    """
    if target_batch.target_logits is None or target_batch.seq_lens is not None:
        raise ValueError("compute_cache_samples needs padded (unpacked) rows with target_logits")
    probs, position_mask = compute_target_distribution(
        target_batch.target_logits, selected_token_ids, selected_token_mask, target_batch.loss_mask
    )
    attention = target_batch.attention_mask
    b, t = attention.shape
    lengths = (attention != 0).sum(1)
    prefix = torch.arange(t, device=attention.device)[None, :] < lengths[:, None]
    if not bool(torch.equal(attention != 0, prefix)):
        raise ValueError("compute_cache_samples expects right-padded rows (attention_mask a prefix of ones)")
    vd = probs.shape[-1]
    fields: dict[str, torch.Tensor] = {
        "input_ids": target_batch.input_ids.to(torch.int64),
        "loss_mask": target_batch.loss_mask.to(torch.uint8),
        "attention_mask": attention.to(torch.uint8),
        "aux_hidden_states": target_batch.aux_hidden_states.to(dtype),
        "position_mask": position_mask.reshape(b, t),
    }
    if topk == 0:
        fields["target_probs"] = probs.to(dtype)
    else:
        k = min(topk, vd)
        values, indices = probs.topk(k, dim=-1)
        if k < vd:  # renormalise what the top k keep; with every column kept the distribution is already whole
            values = values / values.sum(-1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
        fields["target_probs_values"] = values.to(dtype)
        fields["target_probs_indices"] = indices.to(torch.int32)
    fields = {k: v.cpu() for k, v in fields.items()}
    return [{k: v[i, : int(n)] for k, v in fields.items()} for i, n in enumerate(lengths.tolist())]


def write_shard(cache_dir: str, index: int, samples: list[dict[str, torch.Tensor]], sample_indices: list[int]) -> dict:
    """Concatenate ``samples`` (from :func:`compute_cache_samples`) into ``shard-<index>.safetensors``, written
    atomically, then its checksum sidecar. Returns the sidecar entry.

    Raises:
        ValueError: no samples, or samples with different fields.
    """
    from safetensors.torch import save_file

    from eagle_ext._io import atomic_path

    if not samples or len(samples) != len(sample_indices):
        raise ValueError(f"write_shard needs one dataset index per sample, got {len(samples)} / {len(sample_indices)}")
    keys = sorted(samples[0])
    if any(sorted(s) != keys for s in samples):
        raise ValueError("write_shard: samples hold different fields")
    lengths = torch.tensor([s["input_ids"].shape[0] for s in samples], dtype=torch.int64)
    offsets = torch.zeros(len(samples) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    tensors = {k: torch.cat([s[k] for s in samples]).contiguous() for k in keys}
    tensors["offsets"] = offsets
    tensors["sample_index"] = torch.tensor(sample_indices, dtype=torch.int64)
    name = shard_name(index)
    with atomic_path(os.path.join(cache_dir, name)) as tmp:
        # one metadata key only: safetensors writes its metadata map in hash order, so several keys would make
        # equal shards differ byte-wise (and in checksum) between runs; the rest is in the sidecar
        save_file(tensors, tmp, metadata={"format": FORMAT})
    return write_sidecar(cache_dir, name, num_samples=len(samples), first_sample=int(sample_indices[0]),
                         num_tokens=int(offsets[-1]))


# ---------------------------------------------------------------------------------------------- the run


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed
    return None


def _barrier(dist) -> None:
    if dist is not None:
        dist.barrier()


def _target_fingerprint(target_model: str) -> str:
    from eagle_ext.data.fingerprint import path_fingerprint

    return path_fingerprint(target_model) if os.path.exists(target_model) else f"hub:{target_model}"


def _write_embeddings(cache_dir: str, model: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    from eagle_ext._io import atomic_path

    weight = model.get_input_embeddings().weight.detach().to("cpu", torch.float32).contiguous()
    with atomic_path(os.path.join(cache_dir, EMBEDDINGS_FILE)) as tmp:
        save_file({"weight": weight}, tmp, metadata={"format": FORMAT})
    write_sidecar(cache_dir, EMBEDDINGS_FILE)


def precompute_cache(**options: Any) -> dict[str, Any]:
    """Write (or, with ``resume=True``, finish) an offline cache; keyword arguments as
    :class:`PrecomputeOptions`. Under ``torch.distributed`` every rank calls it with the same options and
    rank ``r`` of ``W`` writes shards ``r, r + W, ...``.

    Returns:
        this rank's summary: ``num_samples``, ``num_shards``, ``shards_written`` (indices), ``samples_written``,
        ``bytes_written``, ``seconds`` (target loop and writes), ``samples_per_s``, ``mb_per_s``.

    Raises:
        ValueError / FileNotFoundError: bad options (before anything loads, see
            :func:`validate_precompute_options`); aux layer ids out of the target's range; a tokenizer larger
            than the target vocabulary; ``resume`` into a cache whose manifest differs (every differing field
            listed).
        FileExistsError: shards in ``output_dir`` without ``resume``, or shards without a manifest.
    """
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from eagle_ext._hf import dtype_kwargs
    from eagle_ext._io import write_json
    from eagle_ext.data.loader import build_dataloader
    from eagle_ext.data.vocab import load_or_build_eagle3_token_mapping, tokenizer_special_ids
    from eagle_ext.models.target import (
        TargetCapture,
        _validate_aux_layer_ids,
        default_eagle3_aux_layer_ids,
    )

    opts = validate_precompute_options(PrecomputeOptions(**options))
    out = os.path.abspath(os.fspath(opts.output_dir))
    done = _check_output_dir(opts)
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)
    device = torch.device(opts.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if dist is not None else torch.cuda.current_device())

    target_source = os.path.abspath(opts.target_model) if os.path.exists(opts.target_model) else opts.target_model
    data_source = os.path.abspath(opts.input_data) if os.path.exists(opts.input_data) else opts.input_data
    config = AutoConfig.from_pretrained(target_source, trust_remote_code=opts.trust_remote_code)
    text_config = getattr(config, "text_config", None) or config
    vocab_size, hidden = int(text_config.vocab_size), int(text_config.hidden_size)
    num_layers = int(text_config.num_hidden_layers)
    aux_ids = (default_eagle3_aux_layer_ids(num_layers) if opts.aux_layer_ids is None
               else _validate_aux_layer_ids(opts.aux_layer_ids, num_layers))
    tokenizer = AutoTokenizer.from_pretrained(opts.tokenizer or target_source, trust_remote_code=opts.trust_remote_code)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the target's vocab_size {vocab_size}")

    loader = build_dataloader(
        data_source, tokenizer, opts.seq_length, opts.batch_size, shuffle=False, num_workers=0, split=opts.split,
        shuffle_seed=opts.shuffle_seed, mask_reasoning_content=opts.mask_reasoning_content,
        mask_generation_prompt=opts.mask_generation_prompt, show_progress=opts.show_progress and rank == 0,
    )
    if opts.token_map is not None:  # share another cache's draft vocabulary (an eval cache uses the train one's)
        from eagle_ext.data.vocab import token_mask_from_ids

        shared = read_cache_manifest(opts.token_map)
        if int(shared["target_vocab_size"]) != vocab_size or (
            opts.draft_vocab_size is not None and min(opts.draft_vocab_size, vocab_size) != int(shared["draft_vocab_size"])
        ):
            raise ValueError(
                f"token_map (--token-map) {opts.token_map!r} holds a draft vocabulary of {shared['draft_vocab_size']} "
                f"of {shared['target_vocab_size']} tokens; this run has a target vocabulary of {vocab_size} and "
                f"--draft-vocab-size {opts.draft_vocab_size}"
            )
        selected_ids = torch.tensor(shared["selected_token_ids"], dtype=torch.int64)
        selected_mask = token_mask_from_ids(selected_ids, vocab_size)
    else:
        selected_ids, selected_mask = load_or_build_eagle3_token_mapping(
            loader, vocab_size, opts.draft_vocab_size, tokenizer_special_ids(tokenizer), cache_path=os.path.join(out, DRAFT_VOCAB_FILE),
            show_progress=opts.show_progress and rank == 0,
        )
    dataset = loader.dataset
    num_samples, vd = len(dataset), int(selected_ids.numel())
    topk = min(opts.target_probs_topk, vd)
    target_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    manifest = build_manifest(
        target_model=target_source, target_fingerprint=_target_fingerprint(target_source),
        model_type=str(getattr(config, "model_type", "")), target_vocab_size=vocab_size, target_hidden_size=hidden,
        target_dtype=str(target_dtype).replace("torch.", ""), draft_vocab_size=vd,
        selected_token_ids=selected_ids.tolist(), seq_length=opts.seq_length, dtype=opts.dtype,
        num_samples=num_samples, shard_size=opts.shard_size, target_probs_topk=topk, aux_layer_ids=aux_ids,
        pad_token_id=int(dataset.pad_token_id), input_data=data_source, split=opts.split,
        shuffle_seed=opts.shuffle_seed, data_fingerprint=loader.data_fingerprint,
        mask_reasoning_content=opts.mask_reasoning_content, mask_generation_prompt=opts.mask_generation_prompt,
    )
    manifest_path = os.path.join(out, MANIFEST_FILE)
    if opts.resume and os.path.isfile(manifest_path):
        diffs = manifest_differences(read_cache_manifest(out), manifest)
        if diffs:
            raise ValueError(
                f"--resume refuses: the cache in {out!r} was produced with another configuration; differing "
                f"fields: {'; '.join(diffs)}. Use a new --output-dir or the original settings"
            )
    num_shards = manifest["num_shards"]
    stray = sorted(i for i in done if i >= num_shards)
    if stray:
        raise ValueError(f"output_dir holds shards beyond the {num_shards} this dataset needs: {stray[:5]}")

    model = AutoModelForCausalLM.from_pretrained(
        target_source, trust_remote_code=opts.trust_remote_code, **dtype_kwargs(target_dtype)
    ).to(device)
    target = TargetCapture(model, aux_layer_ids=aux_ids)
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        write_json(os.path.join(out, TARGET_CONFIG_FILE), config.to_dict(), indent=1, sort_keys=True)
        if not (opts.resume and os.path.isfile(os.path.join(out, sidecar_name(EMBEDDINGS_FILE)))):
            _write_embeddings(out, model)
        write_manifest(out, manifest)
    _barrier(dist)  # the manifest is on disk before any rank writes a shard

    todo = [s for s in range(rank, num_shards, world) if s not in done]
    indices = [i for s in todo for i in range(s * opts.shard_size, s * opts.shard_size + shard_sample_count(s, num_samples, opts.shard_size))]
    batches = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=opts.batch_size, shuffle=False,
        collate_fn=loader.collate_fn, num_workers=opts.num_workers, pin_memory=device.type == "cuda",
    )
    ids_dev, mask_dev = selected_ids.to(device), selected_mask.to(device)
    dtype = cache_dtype(opts.dtype)
    bar = tqdm(total=len(indices), desc=f"precompute ({len(todo)} shards)", unit="sample",
               disable=not opts.show_progress or rank != 0)
    written: list[int] = []
    bytes_written = 0
    buffer: list[dict[str, torch.Tensor]] = []
    cursor = 0  # position in ``indices`` of the first buffered sample
    t0 = time.perf_counter()
    for batch in batches:
        live = target.generate_batch(**{k: batch[k].to(device, non_blocking=True)
                                        for k in ("input_ids", "attention_mask", "loss_mask")})
        buffer.extend(compute_cache_samples(live, ids_dev, mask_dev, dtype=dtype, topk=topk))
        bar.update(len(batch["input_ids"]))
        shard = todo[len(written)]
        need = shard_sample_count(shard, num_samples, opts.shard_size)
        if len(buffer) == need:  # batches never span shards: shard_size is a multiple of batch_size
            entry = write_shard(out, shard, buffer, indices[cursor: cursor + need])
            bytes_written += entry["bytes"]
            written.append(shard)
            cursor += need
            buffer = []
            bar.set_postfix(shard=shard, MB=f"{bytes_written / 1e6:.1f}")
    bar.close()
    seconds = time.perf_counter() - t0
    _barrier(dist)
    if rank == 0:
        missing = sorted(set(range(num_shards)) - finished_shards(out))
        if missing:
            raise RuntimeError(f"shards {missing[:5]} were not written; rerun with --resume")
        logger.info("offline cache %s: %d samples in %d shards", out, num_samples, num_shards)
    return {
        "output_dir": out,
        "num_samples": num_samples,
        "num_shards": num_shards,
        "shards_written": written,
        "samples_written": len(indices),
        "bytes_written": bytes_written,
        "seconds": seconds,
        "samples_per_s": len(indices) / seconds if seconds > 0 else 0.0,
        "mb_per_s": bytes_written / 1e6 / seconds if seconds > 0 else 0.0,
    }
