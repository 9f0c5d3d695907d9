"""P-EAGLE training step (draft forward + backward over the COD sequence): flat vs S = 2, 4 partitions.

Tokens/s counts the target positions of the batch (B x L) per second of one step. The target's outputs
(aux hidden states, logits) are random inputs, so the numbers isolate the draft side. Peak memory must fall
as S grows: only one segment's activations are alive at a time. On CPU the COD mask is dense (FlexAttention
has no CPU backward); on CUDA the step uses FlexAttention with the direct BlockMask.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import PartialResults, fmt_bytes, measure, print_table


def step_case(seq_length: int, batch: int, hidden: int, layers: int, vocab: int, draft_vocab: int,
              num_depths: int, segments: int, on: str):
    from transformers import LlamaConfig

    from eagle_ext.models import DraftModel
    from eagle_ext.peagle import PEagleTrainerModule, run_partitioned_step

    torch.manual_seed(0)
    heads = max(hidden // 64, 1)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 3, num_attention_heads=heads,
                         num_key_value_heads=max(heads // 2, 1), num_hidden_layers=8, vocab_size=vocab,
                         max_position_embeddings=seq_length * 2)
    device = on
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    draft = DraftModel.from_target_config(config, draft_vocab, num_hidden_layers=layers,
                                                parallel_drafting=True, mask_token_id=vocab - 1)
    draft = draft.to(device=device, dtype=dtype)
    ids = torch.arange(draft_vocab, device=device)
    trainer = PEagleTrainerModule(draft, selected_token_ids=ids, selected_token_mask=torch.arange(vocab, device=device) < draft_vocab,
                                  num_depths=num_depths, mask_token_id=vocab - 1, sequence_partitions=segments)
    g = torch.Generator(device="cpu").manual_seed(1)
    loss_mask = torch.ones(batch, seq_length, dtype=torch.long)
    loss_mask[:, : seq_length // 8] = 0
    inputs = {
        "input_ids": torch.randint(0, vocab - 1, (batch, seq_length), generator=g).to(device),
        "attention_mask": torch.ones(batch, seq_length, dtype=torch.long, device=device),
        "loss_mask": loss_mask.to(device),
        "aux_hidden_states": torch.randn(batch, seq_length, 3 * hidden, generator=g).to(device, dtype),
        "target_logits": torch.randn(batch, seq_length, vocab, generator=g).to(device, dtype),
    }
    cod = [(u.anchor, u.depth) for u in trainer.build_peagle_plan(inputs["loss_mask"], inputs["attention_mask"],
                                                                   num_segments=1).units]
    plan = trainer.build_peagle_plan(inputs["loss_mask"], inputs["attention_mask"], cod_indices=cod)

    def run():
        trainer.zero_grad(set_to_none=True)
        if segments == 1:
            trainer(**inputs, cod_indices=cod).loss.backward()
        else:
            run_partitioned_step(trainer, plan, inputs)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.device == "cuda":
        shape = dict(seq_length=4096, batch=1, hidden=2048, layers=2, vocab=32000, draft_vocab=32000, num_depths=8)
    elif args.quick:
        shape = dict(seq_length=256, batch=1, hidden=128, layers=2, vocab=2048, draft_vocab=1024, num_depths=8)
    else:
        shape = dict(seq_length=1024, batch=1, hidden=256, layers=2, vocab=8192, draft_vocab=4096, num_depths=8)
    title = ("P-EAGLE step, L={seq_length}, B={batch}, H={hidden}, {layers} layers, K={num_depths}, "
             "Vd={draft_vocab}").format(**shape)
    # each partition count is written as it lands: a run stopped early (SIGINT) keeps what it measured
    with PartialResults("peagle_step", args.device, shape=shape, rows=[]) as out:
        rows = out.payload["rows"]
        for segments in (1, 2, 4):
            res = measure(step_case, device=args.device, warmup=1, repeat=1 if args.quick else 2,
                          segments=segments, on=args.device, **shape)
            tokens = shape["batch"] * shape["seq_length"]
            row = {"partitions": segments, "step s": res["seconds"], "tokens/s": tokens / res["seconds"],
                   "peak": fmt_bytes(res["peak_bytes"]), "peak_bytes": res["peak_bytes"]}
            row["time vs flat"] = row["step s"] / rows[0]["step s"] if rows else 1.0
            row["memory vs flat"] = row["peak_bytes"] / max(rows[0]["peak_bytes"], 1) if rows else 1.0
            out.add("rows", row)
        table = print_table(rows, ["partitions", "step s", "tokens/s", "peak", "time vs flat", "memory vs flat"],
                            title=title)
        out.update(table=table)

if __name__ == "__main__":
    main()
