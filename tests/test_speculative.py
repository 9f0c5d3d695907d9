"""Speculative decoding (eagle_ext.serve.speculative) and the `eagle-ext eval` command.

Targets are tiny Llamas built from configs, in fp64 so that a batched verify forward and one-token steps never
disagree on an argmax by rounding; drafts are untrained (their proposals are checked against the training
recurrence, not for quality). An oracle drafter (the target's own continuation, wired through the same
loop) checks the loop's accounting; a noisy oracle makes acceptance lengths vary from 0 to K.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eagle_ext.eagle3.targets import shift_left_with_zero
from eagle_ext.models import Eagle3DraftModel, Eagle3TargetModel
from eagle_ext.peagle.mask import dense_cod_mask
from eagle_ext.serve import speculative
from eagle_ext.serve.speculative import (
    DecodeResult,
    Eagle3Drafter,
    PEagleDrafter,
    Proposal,
    TargetRunner,
    accept_draft_tokens,
    build_drafter,
    evaluate_drafters,
    evaluate_speculative,
    format_report,
    lossless_label,
    speculative_decode,
    summarize_decodes,
    target_decode,
)

VOCAB, DRAFT_VOCAB, MASK_ID = 64, 40, 3
AUX_IDS = [0, 1, 2]


def _config(vocab: int = VOCAB) -> LlamaConfig:
    # initializer_range 0.2: peaked, varied next-token distributions (0.02 gives near-uniform logits).
    return LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, vocab_size=vocab, initializer_range=0.2, max_position_embeddings=256)


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    torch.manual_seed(1)
    return LlamaForCausalLM(_config()).double().eval()


def _draft(algorithm: str, cfg: LlamaConfig | None = None, draft_vocab: int = DRAFT_VOCAB, seed: int = 2):
    cfg = cfg or _config()
    torch.manual_seed(seed)
    peagle = algorithm == "peagle"
    draft = Eagle3DraftModel.from_target_config(
        cfg, draft_vocab, parallel_drafting=peagle, mask_token_id=MASK_ID if peagle else None,
        num_hidden_layers=2 if peagle else 1,
    )
    with torch.no_grad():  # an untrained draft, but with logits far from uniform
        draft.lm_head.weight.normal_(0.0, 0.5)
    draft.set_vocab_mapping(torch.randperm(cfg.vocab_size)[:draft_vocab])
    return draft.double().eval()


def _prompts(count: int, seed: int = 0, vocab: int = VOCAB) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(1, 12))] for _ in range(count)]


class OracleDrafter:
    """Proposes the target's own continuation: the greedy reference (corrupting each token with probability
    ``noise``), or, when sampling, tokens drawn from the target's distribution with ``q = p``."""

    def __init__(self, model, prompt, reference=None, noise=0.0, seed=0):
        self.model, self.prompt, self.reference = model, list(prompt), reference
        self.noise, self.rng = noise, random.Random(seed)
        self.vocab_size = model.config.vocab_size

    def reset(self):
        pass

    @torch.no_grad()
    def propose(self, tokens, aux_new, num_tokens, temperature, generator):
        if temperature == 0:
            start = tokens.numel() - len(self.prompt)
            ids = list(self.reference[start : start + num_tokens])
            ids = [(t + 1) % self.vocab_size if self.rng.random() < self.noise else t for t in ids]
            return Proposal(torch.tensor(ids))
        seq, picked, probs = tokens.tolist(), [], []
        for _ in range(num_tokens):
            logits = self.model(torch.tensor([seq])).logits[0, -1].float()
            p = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(p, 1, generator=generator))
            seq.append(token)
            picked.append(token)
            probs.append(p)
        return Proposal(torch.tensor(picked), torch.stack(probs))


# ------------------------------------------------------------------------------------------------ lossless


@pytest.mark.parametrize("algorithm", ["eagle3", "peagle"])
def test_greedy_is_lossless_with_real_drafter(target, algorithm):
    runner = TargetRunner(target, AUX_IDS)
    drafter = build_drafter(_draft(algorithm))
    assert isinstance(drafter, PEagleDrafter if algorithm == "peagle" else Eagle3Drafter)
    for prompt in _prompts(6, seed=1):
        base = target_decode(runner, prompt, max_new_tokens=12)
        assert len(base.tokens) == 12 and base.target_forwards == 12
        for k in (1, 3, 5):
            res = speculative_decode(runner, drafter, prompt, num_draft_tokens=k, max_new_tokens=12)
            assert res.tokens == base.tokens
            assert res.target_forwards == 1 + len(res.accepted)


def test_greedy_is_lossless_under_partial_acceptance(target):
    """A noisy oracle makes every acceptance length occur; the output is still the target's greedy output."""
    runner = TargetRunner(target)
    seen: set[int] = set()
    for i, prompt in enumerate(_prompts(6, seed=2)):
        base = target_decode(runner, prompt, max_new_tokens=24)
        for k in (1, 3, 5):
            oracle = OracleDrafter(target, prompt, reference=base.tokens + [0] * k, noise=0.25, seed=i)
            res = speculative_decode(runner, oracle, prompt, num_draft_tokens=k, max_new_tokens=24)
            assert res.tokens == base.tokens
            seen.update(res.accepted)
            # Committed tokens: one per round (+ prefill), plus the accepted drafts; the last round may overshoot.
            assert sum(res.accepted) + len(res.accepted) + 1 >= 24
    assert seen == set(range(6))


def test_stop_token_ends_both_modes_at_the_same_place(target):
    runner = TargetRunner(target, AUX_IDS)
    drafter = build_drafter(_draft("eagle3"))
    prompt = _prompts(1, seed=3)[0]
    free = target_decode(runner, prompt, max_new_tokens=20).tokens
    stop = free[6]
    base = target_decode(runner, prompt, max_new_tokens=20, stop_token_ids=[stop])
    spec = speculative_decode(runner, drafter, prompt, num_draft_tokens=4, max_new_tokens=20, stop_token_ids=[stop])
    assert base.tokens == spec.tokens == free[: free.index(stop) + 1]


# ------------------------------------------------------------------------------------------------ accounting


def test_untrained_draft_gives_tau_close_to_one(target):
    report = evaluate_speculative(TargetRunner(target, AUX_IDS), build_drafter(_draft("eagle3")), _prompts(3, seed=4),
                                  num_draft_tokens=[1, 3, 5], max_new_tokens=16, progress=False)
    for k, spec in zip([1, 3, 5], report["speculative"], strict=True):
        assert spec["lossless"] is True
        assert 1.0 <= spec["tau"] < 1.25
        assert len(spec["acceptance_rate"]) == k
        assert spec["tau"] == pytest.approx(1.0 + sum(spec["acceptance_rate"]))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_oracle_draft_gives_tau_k_plus_one(target, k, temperature):
    runner = TargetRunner(target)
    prompt, m = _prompts(1, seed=5)[0], 1 + 3 * (k + 1)
    reference = target_decode(runner, prompt, max_new_tokens=m + k).tokens
    g = torch.Generator().manual_seed(0)
    res = speculative_decode(runner, OracleDrafter(target, prompt, reference), prompt, num_draft_tokens=k,
                             max_new_tokens=m, temperature=temperature, generator=g)
    assert res.accepted == [k, k, k]
    assert res.target_forwards == 4 and len(res.tokens) == m
    if temperature == 0:
        assert res.tokens == reference[:m]
    summary = summarize_decodes([res])
    assert summary["tau"] == k + 1
    assert summary["acceptance_rate"] == [1.0] * k


def test_summaries_and_report(target):
    runner = TargetRunner(target, AUX_IDS)
    report = evaluate_speculative(runner, build_drafter(_draft("peagle")), _prompts(3, seed=6),
                                  num_draft_tokens=[2, 4], max_new_tokens=8, progress=False)
    assert report["settings"]["algorithm"] == "peagle"
    assert [s["num_draft_tokens"] for s in report["speculative"]] == [2, 4]
    assert report["target_only"]["new_tokens"] == 24
    for s in report["speculative"]:
        assert s["new_tokens"] == 24 and s["lossless"] is True and s["speedup"] > 0
    assert len(report["prompts"]) == 3 and all(p["speculative"][0]["matches_target"] for p in report["prompts"])
    table = format_report(report)
    assert "target-only" in table and table.count("speculative") == 2
    json.dumps(report)  # JSON-ready
    results = [DecodeResult([1, 2], 1.0, 2, 2, [2, 0]), DecodeResult([3], 1.0, 2, 2, [1])]
    s = summarize_decodes(results)
    assert s["tau"] == pytest.approx(2.0) and s["acceptance_rate"] == pytest.approx([2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="mix"):
        summarize_decodes([results[0], DecodeResult([1], 1.0, 1)])


def test_several_drafters_share_one_target_only_baseline(target, monkeypatch):
    runner = TargetRunner(target, AUX_IDS)
    drafters = {"a": build_drafter(_draft("eagle3")), "b": build_drafter(_draft("peagle"))}
    prompts = _prompts(2, seed=8)
    calls = []
    real_decode = speculative.target_decode

    def counting_decode(*args, **kwargs):
        calls.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(speculative, "target_decode", counting_decode)
    reports = evaluate_drafters(runner, drafters, prompts, num_draft_tokens=[2, 3], max_new_tokens=8,
                                warmup=False, progress=False)
    monkeypatch.setattr(speculative, "target_decode", real_decode)
    assert len(calls) == len(prompts)  # one target-only decode per prompt, whatever the number of drafters
    assert reports["a"]["target_only"] is reports["b"]["target_only"]
    assert [reports[n]["settings"]["algorithm"] for n in "ab"] == ["eagle3", "peagle"]
    for name, drafter in drafters.items():
        alone = evaluate_speculative(runner, drafter, prompts, num_draft_tokens=[2, 3], max_new_tokens=8,
                                     warmup=False, progress=False)
        for got, want in zip(reports[name]["speculative"], alone["speculative"], strict=True):
            assert got["tau"] == want["tau"] and got["acceptance_rate"] == want["acceptance_rate"]
            assert got["lossless"] is True and got["new_tokens"] == want["new_tokens"]
            assert got["matching_prompts"] == len(prompts)
    with pytest.raises(ValueError, match="drafters"):
        evaluate_drafters(runner, {}, prompts)


def test_lossless_label_counts_the_prompts_that_matched():
    assert lossless_label({"lossless": True, "matching_prompts": 6}, 6) == "yes"
    assert lossless_label({"lossless": False, "matching_prompts": 4}, 6) == "NO 4/6"
    assert lossless_label({"lossless": False}, 6) == "NO"


def test_bad_arguments_are_rejected(target):
    runner = TargetRunner(target, AUX_IDS)
    drafter = build_drafter(_draft("eagle3"))
    with pytest.raises(ValueError, match="num_draft_tokens"):
        speculative_decode(runner, drafter, [1, 2], num_draft_tokens=0, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        target_decode(runner, [1, 2], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        target_decode(runner, [1, 2], max_new_tokens=2, temperature=-1.0)
    with pytest.raises(ValueError, match="prompt_ids"):
        target_decode(runner, [], max_new_tokens=2)
    with pytest.raises(ValueError, match="aux_layer_ids"):
        TargetRunner(target, [0, 9, 1])
    with pytest.raises(ValueError, match="aux_layer_ids"):  # the drafter needs hidden states
        speculative_decode(TargetRunner(target), drafter, [1, 2], num_draft_tokens=2, max_new_tokens=4)
    other = build_drafter(_draft("eagle3", _config(vocab=80)))
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_decode(runner, other, [1, 2], num_draft_tokens=2, max_new_tokens=4)


# ------------------------------------------------------------------------------------------------ caches


class CheckedTargetRunner(TargetRunner):
    """Compares every cached forward (logits and aux states) with a no-cache recomputation of the whole
    sequence the runner believes it holds."""

    def __init__(self, model, aux_layer_ids):
        super().__init__(model, aux_layer_ids)
        self.fresh = TargetRunner(model, aux_layer_ids)
        self.seq: list[int] = []
        self.checks = 0

    def reset(self):
        super().reset()
        self.seq = []

    def forward(self, input_ids, *, capture_aux):
        assert self.length == len(self.seq)
        logits, aux = super().forward(input_ids, capture_aux=capture_aux)
        self.seq += input_ids.tolist()
        self.fresh.reset()  # the whole sequence from an empty cache
        full_logits, full_aux = self.fresh.forward(torch.tensor(self.seq), capture_aux=True)
        n = input_ids.numel()
        torch.testing.assert_close(logits, full_logits[-n:], rtol=0, atol=1e-9)
        if aux is not None:
            torch.testing.assert_close(aux, full_aux[-n:], rtol=0, atol=1e-9)
        self.checks += 1
        return logits, aux

    def crop(self, length):
        super().crop(length)
        self.seq = self.seq[:length]
        assert self.length == length


def test_target_cache_is_cropped_after_partial_acceptance(target):
    runner = CheckedTargetRunner(target, AUX_IDS)
    plain = TargetRunner(target)
    for i, prompt in enumerate(_prompts(3, seed=7)):
        base = target_decode(plain, prompt, max_new_tokens=16)
        oracle = OracleDrafter(target, prompt, reference=base.tokens + [0] * 4, noise=0.3, seed=i)
        res = speculative_decode(runner, oracle, prompt, num_draft_tokens=4, max_new_tokens=16)
        assert res.tokens == base.tokens
        assert any(0 < a < 4 for a in res.accepted)
    assert runner.checks >= 6


class RecordingDrafter:
    """Runs a real drafter every round (on the verified tokens and aux states the loop hands it) and records
    its proposals, but lets a noisy oracle drive the loop so acceptance lengths vary."""

    def __init__(self, real, oracle):
        self.real, self.oracle = real, oracle
        self.vocab_size = real.vocab_size
        self.rounds: list[tuple[torch.Tensor, torch.Tensor, Proposal]] = []
        self.aux: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(0)

    def reset(self):
        self.real.reset()
        self.aux = []

    def propose(self, tokens, aux_new, num_tokens, temperature, generator):
        self.aux.append(aux_new)
        proposal = self.real.propose(tokens, aux_new, num_tokens, 1.0, self.generator)
        self.rounds.append((tokens.clone(), torch.cat(self.aux), proposal))
        return self.oracle.propose(tokens, aux_new, num_tokens, temperature, generator)


def _full_probs(draft, logits: torch.Tensor) -> torch.Tensor:
    """Draft-vocab logits [k, Vd] -> probabilities [k, V] at temperature 1."""
    q = torch.softmax(logits.float(), dim=-1)
    out = q.new_zeros(q.shape[0], draft.config.vocab_size)
    out[:, torch.arange(draft.config.draft_vocab_size) + draft.d2t] = q
    return out


def _trainer_frame_probs(draft, algorithm, tokens, aux, drafted, k):
    """The K proposal distributions recomputed without a cache, the way the trainers run the draft."""
    n = tokens.numel() - 1
    with torch.no_grad():
        if algorithm == "eagle3":
            # TTT unroll over slots 0..n+k-2: the step-k ids are the step-0 ids shifted k times.
            ids = torch.cat((tokens[1:], drafted[:-1]))[None]
            hidden = draft.project_hidden_states(torch.cat((aux, aux.new_zeros(k - 1, aux.shape[1])))[None])
            cache_hidden: list[list[torch.Tensor]] = [[], []]
            logits = []
            for _ in range(k):
                hidden = draft(ids, hidden, None, None, cache_hidden)
                logits.append(draft.compute_logits(hidden[0, n - 1]))
                ids = shift_left_with_zero(ids)
            return _full_probs(draft, torch.stack(logits))
        # P-EAGLE: the COD layout of all depth-0 slots plus the rollout anchored at n-1 (depth-major order).
        anchor = torch.cat((torch.arange(n), torch.full((k - 1,), n - 1)))
        depth = torch.cat((torch.zeros(n, dtype=torch.int64), torch.arange(1, k)))
        ids = torch.cat((tokens[1:], torch.full((k - 1,), MASK_ID)))
        mask_hidden = draft.mask_hidden.view(1, -1).expand(k - 1, -1)
        hidden = draft.project_hidden_states(torch.cat((aux, mask_hidden.to(aux.dtype))))
        mask = dense_cod_mask(anchor, depth, torch.zeros(n, dtype=torch.int64))[None, None]
        out = draft.forward_peagle(ids[None], hidden[None], (anchor + depth)[None], mask)[0]
        return _full_probs(draft, draft.compute_logits(out[n - 1 :]))


@pytest.mark.parametrize("algorithm", ["eagle3", "peagle"])
def test_drafter_matches_the_training_recurrence(target, algorithm):
    """Each round's cached proposals equal a no-cache recomputation in the trainer's frame (EAGLE-3: the TTT
    unroll; P-EAGLE: the COD forward), and the aux states handed over are the target's at those positions."""
    draft = _draft(algorithm)
    calls = []
    handle = draft.model.layers[0].register_forward_hook(lambda *_: calls.append(1))
    runner, k = TargetRunner(target, AUX_IDS), 4
    for i, prompt in enumerate(_prompts(3, seed=8)):
        base = target_decode(runner, prompt, max_new_tokens=24)
        recorder = RecordingDrafter(build_drafter(draft), OracleDrafter(target, prompt, base.tokens + [0] * k,
                                                                        noise=0.3, seed=i))
        calls.clear()
        res = speculative_decode(runner, recorder, prompt, num_draft_tokens=k, max_new_tokens=20)
        assert res.tokens == base.tokens[:20]
        # One draft forward per round for P-EAGLE, K (one per chain step) for EAGLE-3.
        assert len(calls) == len(recorder.rounds) * (1 if algorithm == "peagle" else k)
        full = Eagle3TargetModel(target, AUX_IDS)
        for tokens, aux, proposal in recorder.rounds:
            ids = tokens[None, :-1]
            captured = full.generate_batch(ids, torch.ones_like(ids), torch.ones_like(ids)).aux_hidden_states[0]
            torch.testing.assert_close(aux, captured, rtol=0, atol=1e-9)
            expected = _trainer_frame_probs(draft, algorithm, tokens, captured, proposal.token_ids, k)
            torch.testing.assert_close(proposal.probs, expected, rtol=0, atol=1e-9)
            assert bool((proposal.probs[torch.arange(k), proposal.token_ids] > 0).all())
    handle.remove()


# ------------------------------------------------------------------------------------------------ sampling


def _chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: p = 0.001)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Chi-square statistic and degrees of freedom; cells expecting < 5 are pooled."""
    n = float(counts.sum())
    expected = probs.double() * n
    small = expected < 5
    obs = torch.cat((counts[~small].double(), counts[small].double().sum().view(1)))
    exp = torch.cat((expected[~small], expected[small].sum().view(1)))
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(((obs - exp) ** 2 / exp).sum()), int(keep.sum()) - 1


def test_accept_draft_tokens_rule():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]]))
    assert accept_draft_tokens(torch.tensor([1, 2]), None, logits, 0.0) == (2, 0)
    assert accept_draft_tokens(torch.tensor([1, 0]), None, logits, 0.0) == (1, 2)
    assert accept_draft_tokens(torch.tensor([0, 2]), None, logits, 0.0) == (0, 1)
    with pytest.raises(ValueError, match="draft_probs"):
        accept_draft_tokens(torch.tensor([1, 2]), None, logits, 1.0)
    with pytest.raises(ValueError, match="target_logits"):
        accept_draft_tokens(torch.tensor([1]), None, logits, 0.0)
    # Identical p and q: everything is accepted.
    p = torch.softmax(logits, dim=-1)
    g = torch.Generator().manual_seed(0)
    assert all(accept_draft_tokens(torch.tensor([1, 2]), p[:2], logits, 1.0, g)[0] == 2 for _ in range(50))


def test_speculative_sampling_rule_keeps_the_target_distribution():
    """One draft token drawn from q, then the rule: the committed token follows p (and q alone would not)."""
    p = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.0, 0.15])
    q = torch.tensor([0.3, 0.1, 0.3, 0.1, 0.2, 0.0])  # no mass on token 5: it comes only from the residual
    logits = torch.log(torch.stack((p, p))).clamp_min(-1e4)
    g = torch.Generator().manual_seed(0)
    trials = 6000
    counts = torch.zeros(6, dtype=torch.int64)
    for _ in range(trials):
        d = torch.multinomial(q, 1, generator=g)
        accepted, nxt = accept_draft_tokens(d, q[None], logits, 1.0, g)
        counts[int(d) if accepted else nxt] += 1
    stat, df = _chi2(counts, p)
    assert stat < _chi2_critical(df), (counts, stat)
    stat_q, df_q = _chi2(torch.multinomial(q, trials, replacement=True, generator=g).bincount(minlength=6), p)
    assert stat_q > _chi2_critical(df_q)


@pytest.mark.parametrize("algorithm", ["eagle3", "peagle"])
def test_speculative_sampling_keeps_the_target_distribution(algorithm):
    """Tiny vocab (8): the 2nd and 3rd new tokens of speculative sampling (both decided by verification,
    K = 2) follow the target's own sampling marginals."""
    vocab, cfg = 8, _config(vocab=8)
    torch.manual_seed(3)
    model = LlamaForCausalLM(cfg).double().eval()
    draft = _draft(algorithm, cfg, draft_vocab=6, seed=4)
    runner, drafter = TargetRunner(model, AUX_IDS), build_drafter(draft, mask_token_id=3)
    prompt = [1, 5, 2]
    with torch.no_grad():
        p1 = torch.softmax(model(torch.tensor([prompt])).logits[0, -1], -1)
        seqs = torch.tensor([prompt + [a] for a in range(vocab)])
        p2_given = torch.softmax(model(seqs).logits[:, -1], -1)  # [x1, x2]
        seqs3 = torch.tensor([prompt + [a, b] for a in range(vocab) for b in range(vocab)])
        p3_given = torch.softmax(model(seqs3).logits[:, -1], -1).view(vocab, vocab, vocab)
    joint12 = p1[:, None] * p2_given
    marg2 = joint12.sum(0)
    marg3 = (joint12[:, :, None] * p3_given).sum((0, 1))
    g = torch.Generator().manual_seed(11)
    second, third = torch.zeros(vocab, dtype=torch.int64), torch.zeros(vocab, dtype=torch.int64)
    accepted = []
    for _ in range(300):
        res = speculative_decode(runner, drafter, prompt, num_draft_tokens=2, max_new_tokens=3, temperature=1.0,
                                 generator=g)
        second[res.tokens[1]] += 1
        third[res.tokens[2]] += 1
        accepted += res.accepted
    for counts, probs in ((second, marg2), (third, marg3)):
        stat, df = _chi2(counts, probs)
        assert stat < _chi2_critical(df), (counts, probs * counts.sum(), stat)
    assert 0 < sum(accepted) < 2 * len(accepted)  # both acceptance and rejection paths ran


# ------------------------------------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["eagle3", "peagle"])
def test_cuda_decoding(target, algorithm):
    """On CUDA: greedy stays lossless (fp64), sampling runs with a CUDA generator, and a bf16 target + draft
    (the CLI's CUDA default) decodes and reports."""
    device = torch.device("cuda")
    model = LlamaForCausalLM(_config()).double()
    model.load_state_dict(target.state_dict())
    model.to(device)
    runner, drafter = TargetRunner(model, AUX_IDS), build_drafter(_draft(algorithm).to(device))
    for prompt in _prompts(4, seed=9):
        base = target_decode(runner, prompt, max_new_tokens=16)
        for k in (1, 3):
            res = speculative_decode(runner, drafter, prompt, num_draft_tokens=k, max_new_tokens=16)
            assert res.tokens == base.tokens
    g = torch.Generator(device=device).manual_seed(0)
    res = speculative_decode(runner, drafter, [1, 2, 3], num_draft_tokens=3, max_new_tokens=16, temperature=0.8,
                             generator=g)
    assert len(res.tokens) == 16
    model.to(torch.bfloat16)
    drafter = build_drafter(_draft(algorithm).to(device, torch.bfloat16))
    report = evaluate_speculative(TargetRunner(model, AUX_IDS), drafter, _prompts(2, seed=10), num_draft_tokens=[3],
                                  max_new_tokens=12, progress=False)
    assert report["speculative"][0]["tau"] >= 1.0 and report["settings"]["device"] == "cuda"


# ------------------------------------------------------------------------------------------------ CLI


def _write_target(directory) -> tuple[object, LlamaConfig]:
    from eagle_ext.testing.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer("hello world count from one two three four five six seven".split())
    cfg = _config(vocab=len(tokenizer))
    torch.manual_seed(5)
    LlamaForCausalLM(cfg).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return tokenizer, cfg


@pytest.mark.parametrize("algorithm, fmt", [("eagle3", "speculators"), ("peagle", "specforge_peagle")])
def test_eval_cli_end_to_end(tmp_path, capsys, algorithm, fmt):
    from eagle_ext.cli import main
    from eagle_ext.serve.export import export_draft

    target_dir, draft_dir = tmp_path / "target", tmp_path / "draft"
    tokenizer, cfg = _write_target(target_dir)
    mask_id = tokenizer.convert_tokens_to_ids("<|mask|>")
    torch.manual_seed(6)
    peagle = algorithm == "peagle"
    draft = Eagle3DraftModel.from_target_config(cfg, 12, parallel_drafting=peagle,
                                                mask_token_id=mask_id if peagle else None)
    draft.set_vocab_mapping(torch.randperm(cfg.vocab_size)[:12])
    # No embedding shipped: the evaluator re-attaches the target's.
    export_draft(draft, draft_dir, format=fmt, aux_layer_ids=AUX_IDS, target_name_or_path=str(target_dir),
                 target_num_hidden_layers=cfg.num_hidden_layers, dtype="fp32", include_embeddings=False)
    prompts = tmp_path / "prompts.jsonl"
    chat = [{"role": "user", "content": "one two"}, {"role": "assistant", "content": "three"}]
    rows = ['"hello world"', json.dumps({"prompt": "count from one"}), "", json.dumps({"messages": chat})]
    prompts.write_text("\n".join(rows) + "\n")
    out = tmp_path / "report.json"
    code = main(["eval", "--target", str(target_dir), "--draft", str(draft_dir), "--prompts", str(prompts),
                 "--num-draft-tokens", "1", "3", "--max-new-tokens", "6", "--out", str(out), "--device", "cpu",
                 "--dtype", "fp32", "--ignore-eos", "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["settings"]["algorithm"] == algorithm and report["settings"]["format"] == fmt
    assert report["settings"]["num_prompts"] == 3 and report["settings"]["aux_layer_ids"] == AUX_IDS
    assert report["target_only"]["new_tokens"] == 18
    for spec in report["speculative"]:
        assert spec["lossless"] is True and spec["new_tokens"] == 18 and spec["tau"] >= 1.0
    printed = capsys.readouterr().out
    assert "target-only" in printed and "speed-up" in printed


def test_eval_cli_rejects_bad_arguments_before_loading(tmp_path, capsys):
    from eagle_ext.cli import main
    from eagle_ext.serve.prompts import load_prompts

    target_dir = tmp_path / "target"
    target_dir.mkdir()
    (target_dir / "config.json").write_text("{}")  # never read: validation fails first
    draft_dir = tmp_path / "draft"
    draft_dir.mkdir()
    (draft_dir / "config.json").write_text("{}")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"hi"\n')
    base = ["eval", "--target", str(target_dir), "--draft", str(draft_dir), "--prompts", str(prompts)]
    cases = [
        (["--num-draft-tokens", "0"], "--num-draft-tokens"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--temperature", "-0.5"], "--temperature"),
        (["--out", str(tmp_path)], "--out"),
    ]
    for extra, needle in cases:
        assert main(base + extra) == 2
        assert needle in capsys.readouterr().err
    missing = str(tmp_path / "missing")
    for target_arg, draft_arg, prompts_arg, needle in (
        (missing, draft_dir, prompts, "--target"), (target_dir, missing, prompts, "--draft"),
        (target_dir, draft_dir, missing, "--prompts"), (target_dir, prompts, prompts, "--draft"),
    ):
        args = ["eval", "--target", str(target_arg), "--draft", str(draft_arg), "--prompts", str(prompts_arg)]
        assert main(args) == 2
        assert needle in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    for text, needle in (
        ("[1, 2]\n", "line 1"), ('"ok"\n{"text": "x"}\n', "line 2"), ("{oops\n", "invalid JSON"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}\n', "only assistant"), ("\n", "no prompt"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=needle):
            load_prompts(str(bad))
    bad.write_text('{"prompt": "a", "system": "be brief"}\n"b"\n"c"\n')
    assert load_prompts(str(bad), max_prompts=2) == [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a"}],
        [{"role": "user", "content": "b"}],
    ]
