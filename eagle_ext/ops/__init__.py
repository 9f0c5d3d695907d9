"""Hot ops. Each public function validates its inputs, dispatches to the fast path for the device
(C++ extension, Triton on CUDA, chunked torch on CPU) and has a plain-torch reference it is tested against."""

from eagle_ext._lazy import lazy_exports

_EXPORTS = {
    "pack_documents": "eagle_ext.ops.packing",
    "fill_packed_rows": "eagle_ext.ops.packing",
    "generate_cod_sample_indices": "eagle_ext.ops.cod",
    "assign_cod_segments": "eagle_ext.ops.cod",
    "fused_linear_kl": "eagle_ext.ops.linear_kl",
    "build_cod_block_mask": "eagle_ext.ops.cod_block_mask",
    "cod_block_mask_reference": "eagle_ext.ops.cod_block_mask",
    "fused_linear_kl_reference": "eagle_ext.ops.linear_kl",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
