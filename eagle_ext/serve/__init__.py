"""Serving: export a draft in the formats vLLM (speculators) and SGLang (specforge) load (one record each in
:mod:`eagle_ext.serve.formats`), read an export back, check an export directory, and measure real acceptance with
speculative decoding."""

from eagle_ext._lazy import lazy_exports

_EXPORTS = {
    "ExportFormat": "eagle_ext.serve.formats",  # the format table (light: no torch)
    "export_format": "eagle_ext.serve.formats",
    "EXPORT_FORMATS": "eagle_ext.serve.export",  # the writer; it re-exports the reader and the checker
    "ExportedDraft": "eagle_ext.serve.export_read",
    "detect_export_format": "eagle_ext.serve.export_read",
    "load_exported_draft": "eagle_ext.serve.export_read",
    "check_export": "eagle_ext.serve.export_check",
    "export_engine_notes": "eagle_ext.serve.export_check",
    "export_draft": "eagle_ext.serve.export",
    "export_trained_draft": "eagle_ext.serve.export",
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
