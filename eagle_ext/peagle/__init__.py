"""P-EAGLE (parallel drafting): COD sampling, sequence-partition assignment, the COD attention mask and
the parallel-drafting trainer module."""

from eagle_ext._lazy import lazy_exports

_EXPORTS = {
    "generate_cod_sample_indices": "eagle_ext.ops.cod",
    "assign_cod_segments": "eagle_ext.ops.cod",
    "create_peagle_mask_mod": "eagle_ext.peagle.mask",
    "cod_mask_mod": "eagle_ext.peagle.mask",
    "dense_cod_mask": "eagle_ext.peagle.mask",
    "document_ids_from_lengths": "eagle_ext.peagle.mask",
    "PEagleTrainerModule": "eagle_ext.peagle.trainer",
    "PEaglePlan": "eagle_ext.peagle.trainer",
    "PEagleStepMetrics": "eagle_ext.peagle.trainer",
    "run_partitioned_step": "eagle_ext.peagle.trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
