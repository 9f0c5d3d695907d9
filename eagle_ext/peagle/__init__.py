"""P-EAGLE (parallel drafting): COD sampling, sequence-partition assignment, the COD attention mask and
the parallel-drafting trainer module."""

from eagle_ext._lazy import lazy_exports

_EXPORTS = {
    "generate_cod_sample_indices": "eagle_ext.ops.cod",
    "assign_cod_segments": "eagle_ext.ops.cod",
    "create_peagle_mask_mod": "eagle_ext.peagle.mask",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
