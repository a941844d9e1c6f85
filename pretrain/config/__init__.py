"""Configs composed from ``conf/`` and checked before any work: which targets they may name, the
types and values of their keys, and each mistake said with its fix."""
