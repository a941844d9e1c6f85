"""Fine-tuning of exported encoders on small labeled sets, and the report over many runs."""
