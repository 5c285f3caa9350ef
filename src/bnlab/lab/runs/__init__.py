"""Run folders: atomic files, hashed checkpoints, the lock on ``--out``, resume and reuse."""
