"""Explanations: attention capture, attention roll-out and Dense Attention Roll-Out, the baselines (Chefer et al.'s
gradient-weighted relevance, Grad-CAM on tokens, random), quality metrics (:mod:`lifevit.explain.metrics`), overlays.

See ``docs/explain.md`` for the exact definitions.
"""

from .api import METHODS, Explanation, explain, infer_task, segmentation_token_probs
from .capture import (
    AttentionRecord,
    AttentionRecorder,
    attention_modules,
    capture_attention,
    record_gradient,
    windows_to_global,
)
from .overlay import save_overlay
from .relevance import (
    MultiheadAttentionRecorder,
    cross_attention_relevance,
    grad_cam,
    gradient_weighted_attention,
    normalize_self_relevance,
    self_attention_relevance,
)
from .rollout import (
    Rollout,
    attention_rollout,
    box_token_weights,
    class_token_map,
    dense_rollout,
    rollout_records,
    token_class_weights,
)

__all__ = [
    "METHODS",
    "AttentionRecord",
    "AttentionRecorder",
    "Explanation",
    "MultiheadAttentionRecorder",
    "Rollout",
    "attention_modules",
    "attention_rollout",
    "box_token_weights",
    "capture_attention",
    "class_token_map",
    "cross_attention_relevance",
    "dense_rollout",
    "explain",
    "grad_cam",
    "gradient_weighted_attention",
    "infer_task",
    "normalize_self_relevance",
    "record_gradient",
    "rollout_records",
    "save_overlay",
    "segmentation_token_probs",
    "self_attention_relevance",
    "token_class_weights",
    "windows_to_global",
]
