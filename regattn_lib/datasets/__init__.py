"""Datasets: retrieval test sets, distractors, ImageNet-style folders, downloads and checksums."""
