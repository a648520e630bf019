"""Offline side of MedSAMix: load SAM checkpoints, merge them layer group by layer group, search the merge."""
