"""Task-specific models, losses and metrics built on the lifevit backbones (detection, segmentation)."""
