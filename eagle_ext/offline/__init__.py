"""Offline EAGLE-3 training: run the frozen target once (``eagle-ext precompute``), write a sharded,
checksummed cache, and train from it with no target loaded.

Modules: ``manifest`` (layout, manifest, compatibility, checksums, whole-cache verification), ``options``
(``PrecomputeOptions`` and their validation), ``writer`` (``precompute_cache``: the target pass and the shard
writer), ``reader`` (the memory-mapped dataset, the dataloader and the loaders of embeddings, vocabulary and
target config), ``cli`` (the ``precompute`` command).

Importing this package is cheap: names resolve on first use.
"""

from eagle_ext._lazy import lazy_exports

_EXPORTS = {
    # what a training run calls (cached mode)
    "read_cache_manifest": "eagle_ext.offline.manifest",
    "check_cache_compatible": "eagle_ext.offline.manifest",
    "load_cached_embeddings": "eagle_ext.offline.reader",
    "load_cached_token_mapping": "eagle_ext.offline.reader",
    "load_cached_target_config": "eagle_ext.offline.reader",
    "build_cached_dataloader": "eagle_ext.offline.reader",
    "CachedEagle3Dataset": "eagle_ext.offline.reader",
    "CACHED_BATCH_KEYS": "eagle_ext.offline.reader",
    # writing and checking
    "precompute_cache": "eagle_ext.offline.writer",
    "PrecomputeOptions": "eagle_ext.offline.options",
    "validate_precompute_options": "eagle_ext.offline.options",
    "compute_cache_samples": "eagle_ext.offline.writer",
    "write_shard": "eagle_ext.offline.writer",
    "verify_cache": "eagle_ext.offline.manifest",
    "CacheIntegrityError": "eagle_ext.offline.manifest",
    "FORMAT_VERSION": "eagle_ext.offline.manifest",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
