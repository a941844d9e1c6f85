"""Callbacks that keep a run safe: its checkpoint, its random state, its loss."""
