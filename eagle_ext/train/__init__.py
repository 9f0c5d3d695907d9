"""The training recipe: typed config (YAML + dotted overrides), the loop for EAGLE-3 and P-EAGLE (single process
or torchrun: DDP draft, replicated or FSDP2-sharded target), checkpoints with exact resume, metrics and plots."""

from eagle_ext._lazy import lazy_exports

_EXPORTS = {
    "RecipeConfig": "eagle_ext.train.config",
    "ConfigError": "eagle_ext.train.config",
    "load_config": "eagle_ext.train.config",
    "config_to_yaml": "eagle_ext.train.config",
    "run_training": "eagle_ext.train.loop",
    "TrainResult": "eagle_ext.train.loop",
    "Trainer": "eagle_ext.train.trainer",
    "RunState": "eagle_ext.train.trainer",
    "describe_run": "eagle_ext.train.dry_run",
    "resolve_checkpoint": "eagle_ext.serve.checkpoints",
    "load_checkpoint_draft": "eagle_ext.serve.checkpoints",
    "save_draft": "eagle_ext.serve.checkpoints",
    "load_draft": "eagle_ext.serve.checkpoints",
    "build_optimizer": "eagle_ext.train.optim",
    "warmup_cosine": "eagle_ext.train.optim",
    "MetricsLog": "eagle_ext.train.reporting",
    "plot_curves": "eagle_ext.train.reporting",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
