"""Plumbing every layer may use: atomic file writes, torchrun's processes."""
