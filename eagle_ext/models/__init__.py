"""Models: frozen target capture (three aux hidden states + shifted supervision) and the Llama-style
EAGLE-3 / P-EAGLE draft with its TTT attention."""

from eagle_ext._lazy import lazy_exports

_EXPORTS = {
    "Eagle3TargetModel": "eagle_ext.models.target",
    "TargetCapture": "eagle_ext.models.target",
    "Eagle3TargetBatch": "eagle_ext.models.target",
    "default_eagle3_aux_layer_ids": "eagle_ext.models.target",
    "build_block_causal_additive_mask": "eagle_ext.models.target",
    "find_decoder_layers": "eagle_ext.models.target",
    "Eagle3DraftModel": "eagle_ext.models.draft",
    "DraftModel": "eagle_ext.models.draft",
    "build_draft_config": "eagle_ext.models.draft",
    "ttt_attention": "eagle_ext.models.attention",
    "ttt_attention_reference": "eagle_ext.models.attention",
    "ttt_attention_lean": "eagle_ext.models.attention",
    "masked_attention": "eagle_ext.models.attention",
    "RotaryEmbedding": "eagle_ext.models.rope",
    "document_ids_from_seq_lens": "eagle_ext.models.masks",
    "effective_norm_weight": "eagle_ext.models.draft",
    "LayerAttention": "eagle_ext.models.families",
    "check_packing_supported": "eagle_ext.models.families",
    "default_draft_shape": "eagle_ext.models.families",
    "stateful_layer_types": "eagle_ext.models.families",
    "target_layer_attention": "eagle_ext.models.families",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
