"""What the project knows about serving engines that cannot serve a target family with a draft.

One table, :data:`KNOWN_ENGINE_LIMITS`, read by ``eagle-ext export`` (recorded in the export's ``eagle_ext``
block and printed), ``eagle-ext export --check`` (printed as warnings: the export itself is valid) and
docs/serving.md's family x engine table. Each entry names the engine, the version it was seen with, the target
families (``model_type`` and ``architectures`` spellings) and what fails. Add an entry when a run shows a limit;
remove or re-version it when a newer engine lifts it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["KNOWN_ENGINE_LIMITS", "EngineLimit", "engine_limit_notes", "known_engine_limits"]


@dataclass(frozen=True)
class EngineLimit:
    """A target family an engine version is known not to serve with a draft.

    Attributes:
        engine: ``"vllm"`` or ``"sglang"``.
        version: the engine version the limit was seen with (e.g. ``"0.32.0"``).
        model_types: the target's ``model_type`` spellings (text and multimodal configs).
        architectures: the target's ``architectures`` spellings (the speculators verifier records them).
        problem: what fails, with the engine's own error where there is one.
        device: ``"cpu"`` when seen only on the CPU build, ``None`` when the model code itself lacks support.
    """

    engine: str
    version: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    problem: str
    device: str | None = None

    def describe(self) -> str:
        name = {"vllm": "vLLM", "sglang": "SGLang"}.get(self.engine, self.engine)
        where = f" ({self.device.upper()} build)" if self.device else ""
        return f"{name} {self.version}{where} cannot serve a {'/'.join(self.model_types)} target with a draft: {self.problem}"


KNOWN_ENGINE_LIMITS: tuple[EngineLimit, ...] = (
    EngineLimit("vllm", "0.32.0", ("glm4",), ("Glm4ForCausalLM",),
                "its GLM-4 model has no EAGLE-3 interface ('Model does not support EAGLE3 interface')"),
    EngineLimit("vllm", "0.32.0", ("gemma3", "gemma3_text"),
                ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
                "its Gemma 3 model (gemma3.py) has no EAGLE-3 interface"),
    EngineLimit("vllm", "0.32.0", ("deepseek_v3", "deepseek_v2", "kimi_k2"),
                ("DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM"),
                "an MLA target and an EAGLE-3 draft have no common KV-cache block size", device="cpu"),
    EngineLimit("vllm", "0.32.0", ("qwen3_next",), ("Qwen3NextForCausalLM",),
                "Qwen3-Next fails to run", device="cpu"),
)


def known_engine_limits(model_type: str | None = None, architectures: Iterable[str] | None = None,
                        *, engine: str | None = None) -> list[EngineLimit]:
    """The entries of :data:`KNOWN_ENGINE_LIMITS` matching a target (by ``model_type`` or any of its
    ``architectures``), optionally for one ``engine``."""
    archs = set(architectures or ())
    return [limit for limit in KNOWN_ENGINE_LIMITS
            if (engine is None or limit.engine == engine)
            and ((model_type is not None and model_type in limit.model_types) or archs & set(limit.architectures))]


def engine_limit_notes(model_type: str | None = None, architectures: Iterable[str] | None = None,
                       *, engine: str | None = None) -> list[str]:
    """:meth:`EngineLimit.describe` of every matching entry (see :func:`known_engine_limits`)."""
    return [limit.describe() for limit in known_engine_limits(model_type, architectures, engine=engine)]
