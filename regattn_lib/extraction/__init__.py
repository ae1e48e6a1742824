"""Streaming images through a backbone into descriptor heads: the registry of methods and their
heads, batched cached extraction, the whitening pass and multi-process extraction."""
