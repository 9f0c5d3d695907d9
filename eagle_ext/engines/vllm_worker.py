"""The vLLM side of :mod:`eagle_ext.engines.vllm`: a script run by the interpreter that has vLLM.

It imports only the standard library and vLLM (never eagle_ext), so vLLM can live in its own environment with
its own pinned torch and transformers. Protocol (one JSON object per line):

- argv: ``--reply-fd N``: the pipe the replies go to. Whatever vLLM prints goes to stderr, never there.
- stdin line 1: the engine settings (``model``, ``tokenizer``, ``dtype``, ``seed``, ``max_model_len``,
  ``speculative_config``, ``max_num_seqs``, ``enforce_eager``, ``gpu_memory_utilization``,
  ``enable_prefix_caching``). Reply: ``{"ok": true, "vllm_version", "platform", "device_name", "init_s"}``.
- then requests: ``{"op": "generate", "prompts": [[ids]], "sampling": [{...} per prompt], "sequential": bool}``
  -> ``{"ok": true, "outputs": [{"token_ids", "text", "finish_reason", "seconds"}], "seconds", "spec"}``,
  where ``spec`` holds the speculative-decoding counters accumulated during this request only (deltas of
  vLLM's cumulative counters); ``seconds`` and ``spec`` per output exist only in sequential (batch-1) mode;
  ``{"op": "close"}`` ends the worker.
- Any failure replies ``{"ok": false, "error": str, "traceback": str}``; a failed start ends the worker.
"""

import json
import os
import sys
import time
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
# Run as a script, Python puts this directory first on sys.path, and eagle_ext/engines/vllm.py would shadow the
# real vllm package: drop it before anything imports vllm.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

_SPEC_COUNTERS = {
    "vllm:spec_decode_num_drafts": "num_drafts",
    "vllm:spec_decode_num_draft_tokens": "num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "num_accepted_tokens",
}
_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"


def spec_counters(metrics) -> dict:
    """vLLM's cumulative speculative-decoding counters, summed over engines (labels)."""
    out = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0, "accepted_per_pos": []}
    for metric in metrics:
        if metric.name in _SPEC_COUNTERS:
            out[_SPEC_COUNTERS[metric.name]] += int(metric.value)
        elif metric.name == _PER_POS:
            values = [int(v) for v in metric.values]
            pos = out["accepted_per_pos"]
            pos.extend([0] * (len(values) - len(pos)))
            for i, v in enumerate(values):
                pos[i] += v
    return out


def counter_delta(after: dict, before: dict) -> dict:
    delta = {k: after[k] - before[k] for k in ("num_drafts", "num_draft_tokens", "num_accepted_tokens")}
    n = max(len(after["accepted_per_pos"]), len(before["accepted_per_pos"]))
    a = after["accepted_per_pos"] + [0] * (n - len(after["accepted_per_pos"]))
    b = before["accepted_per_pos"] + [0] * (n - len(before["accepted_per_pos"]))
    delta["accepted_per_pos"] = [x - y for x, y in zip(a, b)]
    return delta


def _start(settings: dict):
    from vllm import LLM
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    kwargs = {
        "model": settings["model"],
        "dtype": settings.get("dtype", "auto"),
        "seed": int(settings.get("seed", 0)),
        "disable_log_stats": False,  # the acceptance counters need the stat loggers
        # CPU: the share of RAM vLLM reserves for the KV cache; the CUDA default (0.9) refuses to start on CPU.
        "gpu_memory_utilization": settings.get("gpu_memory_utilization") or (0.15 if on_cpu else 0.9),
        # CPU: compiling costs minutes at start-up and gains little at batch 1; CUDA keeps graphs by default.
        "enforce_eager": on_cpu if settings.get("enforce_eager") is None else bool(settings["enforce_eager"]),
    }
    for key in ("tokenizer", "max_model_len", "max_num_seqs", "speculative_config", "enable_prefix_caching"):
        if settings.get(key) is not None:
            kwargs[key] = settings[key]
    llm = LLM(**kwargs)
    return llm, ("cpu" if on_cpu else current_platform.device_type)


def _device_name(platform: str) -> str:
    if platform == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    import platform as _platform

    return _platform.processor() or _platform.machine()


def _generate(llm, request: dict) -> dict:
    from vllm import SamplingParams

    prompts = [{"prompt_token_ids": [int(t) for t in ids]} for ids in request["prompts"]]
    sampling = request["sampling"]
    if isinstance(sampling, dict):
        sampling = [sampling] * len(prompts)
    params = [SamplingParams(
        max_tokens=int(s["max_tokens"]), temperature=float(s.get("temperature", 0.0)),
        top_p=float(s.get("top_p", 1.0)), seed=s.get("seed"), stop_token_ids=list(s.get("stop_token_ids") or []),
        ignore_eos=bool(s.get("ignore_eos", False)), skip_special_tokens=True,
    ) for s in sampling]
    before = spec_counters(llm.get_metrics())
    outputs = []
    start = time.perf_counter()
    if request.get("sequential"):
        for prompt, param in zip(prompts, params):
            first = spec_counters(llm.get_metrics())
            t0 = time.perf_counter()
            result = llm.generate([prompt], param, use_tqdm=False)[0]
            elapsed = time.perf_counter() - t0
            outputs.append((result, elapsed, counter_delta(spec_counters(llm.get_metrics()), first)))
    else:
        results = llm.generate(prompts, params, use_tqdm=False)
        outputs = [(r, None, None) for r in results]
    seconds = time.perf_counter() - start
    after = spec_counters(llm.get_metrics())
    return {
        "ok": True, "seconds": seconds, "spec": counter_delta(after, before),
        "outputs": [{"token_ids": list(r.outputs[0].token_ids), "text": r.outputs[0].text,
                     "finish_reason": r.outputs[0].finish_reason, "seconds": s, "spec": c} for r, s, c in outputs],
    }


def _reply(stream, obj: dict) -> None:
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def _failure(exc: BaseException) -> dict:
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--reply-fd":
        print("usage: vllm_worker.py --reply-fd N (settings and requests as JSON lines on stdin)", file=sys.stderr)
        return 2
    replies = os.fdopen(int(argv[1]), "w", encoding="utf-8")
    os.dup2(2, 1)  # vLLM and its libraries print to stdout: send it to the log (stderr), never to the replies
    sys.stdout = sys.stderr
    try:
        settings = json.loads(sys.stdin.readline())
        t0 = time.perf_counter()
        llm, platform = _start(settings)
        import vllm

        _reply(replies, {"ok": True, "vllm_version": vllm.__version__, "platform": platform,
                         "device_name": _device_name(platform), "init_s": time.perf_counter() - t0})
    except BaseException as exc:  # noqa: BLE001 - the parent shows it
        _reply(replies, _failure(exc))
        return 1
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "close":
            break
        try:
            if request.get("op") != "generate":
                raise ValueError(f"unknown op {request.get('op')!r}")
            _reply(replies, _generate(llm, request))
        except Exception as exc:  # noqa: BLE001
            _reply(replies, _failure(exc))
    _reply(replies, {"ok": True, "closed": True})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
