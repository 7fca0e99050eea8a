"""Everything a run leaves behind: checkpoints, the model registry, run metadata, logs.

Nothing is imported here: each module is imported by its own name, and a task that needs one pays
only for that one (task=registry starts without torch).
"""
