"""Serving: export a draft in the formats vLLM (speculators) and SGLang (specforge) load, read an export back,
check an export directory, and measure real acceptance with speculative decoding."""

from eagle_ext._lazy import lazy_exports

_EXPORTS = {
    "EXPORT_FORMATS": "eagle_ext.serve.export",
    "ExportedDraft": "eagle_ext.serve.export",
    "check_export": "eagle_ext.serve.export",
    "detect_export_format": "eagle_ext.serve.export",
    "export_draft": "eagle_ext.serve.export",
    "export_trained_draft": "eagle_ext.serve.export",
    "load_exported_draft": "eagle_ext.serve.export",
    "export_engine_notes": "eagle_ext.serve.export",
    "KNOWN_ENGINE_LIMITS": "eagle_ext.serve.engine_limits",
    "EngineLimit": "eagle_ext.serve.engine_limits",
    "known_engine_limits": "eagle_ext.serve.engine_limits",
    "export_checkpoint": "eagle_ext.serve.export_cli",
    "resolve_checkpoint": "eagle_ext.serve.checkpoints",
    "read_checkpoint_meta": "eagle_ext.serve.checkpoints",
    "load_checkpoint_draft": "eagle_ext.serve.checkpoints",
    "TargetRunner": "eagle_ext.serve.speculative",
    "DraftKVCache": "eagle_ext.serve.speculative",
    "Drafter": "eagle_ext.serve.speculative",
    "Proposal": "eagle_ext.serve.speculative",
    "Eagle3Drafter": "eagle_ext.serve.speculative",
    "PEagleDrafter": "eagle_ext.serve.speculative",
    "build_drafter": "eagle_ext.serve.speculative",
    "accept_draft_tokens": "eagle_ext.serve.speculative",
    "DecodeResult": "eagle_ext.serve.speculative",
    "target_decode": "eagle_ext.serve.speculative",
    "speculative_decode": "eagle_ext.serve.speculative",
    "summarize_decodes": "eagle_ext.serve.speculative",
    "evaluate_drafters": "eagle_ext.serve.speculative",
    "evaluate_speculative": "eagle_ext.serve.speculative",
    "format_report": "eagle_ext.serve.speculative",
    "lossless_label": "eagle_ext.serve.speculative",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
