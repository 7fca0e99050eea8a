"""The project's launchers (hydra/launcher=joblib, submitit_local, submitit_slurm and slurm): the
plugins' own, with a sweep that outlives a job killed without a word. Hydra instantiates launchers
only from the ``hydra_plugins`` namespace."""
