"""Chat data to EAGLE-3 training batches: reading and rendering chats with the target tokenizer's template
and an assistant-only ``loss_mask``, the draft vocabulary, padded and packed rows, and the dataloader.

Modules: ``sources`` (files, directories, HF datasets, split slices), ``chat`` (row normalisation,
rendering, masks), ``tokenization`` (whole-dataset tokenisation and its cache), ``vocab`` (draft
vocabulary and its cache), ``packing`` (packed rows and collate functions), ``loader`` (datasets, samplers,
``build_dataloader``, public-API alias ``build_eagle3_dataloader``), ``fingerprint`` (cache keys).

Importing this package is cheap: names resolve (and pull in ``datasets`` / ``transformers``) on first use.
"""

from eagle_ext._lazy import lazy_exports

_EXPORTS = {
    # public API (DESIGN.md §3)
    "count_draft_vocab": "eagle_ext.data.vocab",
    "build_eagle3_token_mapping": "eagle_ext.data.vocab",
    "save_eagle3_token_mapping": "eagle_ext.data.vocab",
    "load_eagle3_token_mapping": "eagle_ext.data.vocab",
    "load_or_build_eagle3_token_mapping": "eagle_ext.data.vocab",
    "build_packed_eagle3_dataset": "eagle_ext.data.packing",
    "pack_collate": "eagle_ext.data.packing",
    "pad_collate": "eagle_ext.data.packing",
    "build_eagle3_dataloader": "eagle_ext.data.loader",
    # helpers
    "build_dataloader": "eagle_ext.data.loader",
    "count_supervised_tokens": "eagle_ext.data.vocab",
    "select_draft_vocab": "eagle_ext.data.vocab",
    "draft_vocab_coverage": "eagle_ext.data.vocab",
    "token_mask_from_ids": "eagle_ext.data.vocab",
    "token_mapping_fingerprint": "eagle_ext.data.vocab",
    "tokenizer_special_ids": "eagle_ext.data.vocab",
    "PackingPlan": "eagle_ext.data.packing",
    "plan_packing": "eagle_ext.data.packing",
    "pack_row": "eagle_ext.data.packing",
    "flatten_documents": "eagle_ext.data.packing",
    "ChatTokenizer": "eagle_ext.data.chat",
    "ChatTemplateError": "eagle_ext.data.chat",
    "SkippedRow": "eagle_ext.data.chat",
    "normalize_chat_row": "eagle_ext.data.chat",
    "normalize_messages": "eagle_ext.data.chat",
    "tokenize_conversation": "eagle_ext.data.chat",
    "load_chat_source": "eagle_ext.data.sources",
    "tokenize_chat_dataset": "eagle_ext.data.tokenization",
    "chat_data_fingerprint": "eagle_ext.data.tokenization",
    "TokenizedChats": "eagle_ext.data.tokenization",
    "Eagle3DataLoader": "eagle_ext.data.loader",
    "ChatSampleDataset": "eagle_ext.data.loader",
    "PackedChatDataset": "eagle_ext.data.loader",
    "SeededShuffleSampler": "eagle_ext.data.loader",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
