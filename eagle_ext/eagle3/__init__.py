"""EAGLE-3 training: target distribution, the TTT trainer module, the step loss and tau_sim."""

from eagle_ext._lazy import lazy_exports

_EXPORTS = {
    "shift_left_with_zero": "eagle_ext.eagle3.targets",
    "compute_target_distribution": "eagle_ext.eagle3.targets",
    "Eagle3StepMetrics": "eagle_ext.eagle3.metrics",
    "simulated_accept_length": "eagle_ext.eagle3.metrics",
    "Eagle3StepLoss": "eagle_ext.eagle3.loss",
    "eagle3_step_loss": "eagle_ext.eagle3.loss",
    "Eagle3TrainerModule": "eagle_ext.eagle3.trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
