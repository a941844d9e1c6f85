"""Images for training: where they come from, which of them a run uses, how they are batched and
augmented, and the data modules that serve them (in memory, or streamed from prepared shards)."""
