"""The encoder file: its format, reading and checks, conversion from a checkpoint, and the portable program."""
