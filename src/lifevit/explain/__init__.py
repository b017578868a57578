"""Explanations: attention capture, attention roll-out and Dense Attention Roll-Out, overlays.

See ``docs/explain.md`` for the exact definitions.
"""

from .api import Explanation, explain, infer_task, segmentation_token_probs
from .capture import AttentionRecord, AttentionRecorder, attention_modules, capture_attention, windows_to_global
from .overlay import save_overlay
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
    "AttentionRecord",
    "AttentionRecorder",
    "Explanation",
    "Rollout",
    "attention_modules",
    "attention_rollout",
    "box_token_weights",
    "capture_attention",
    "class_token_map",
    "dense_rollout",
    "explain",
    "infer_task",
    "rollout_records",
    "save_overlay",
    "segmentation_token_probs",
    "token_class_weights",
    "windows_to_global",
]
