"""What every command runs on: the command line and its errors, run folders, the Trainer and its
callbacks, resuming, fault tolerance, and files written whole."""
