"""Hydra plugins of this project (discovered by Hydra in the hydra_plugins namespace)."""
