"""Data sets in their real on-disk formats, transforms and samplers."""
