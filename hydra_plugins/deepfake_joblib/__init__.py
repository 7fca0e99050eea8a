"""The project's joblib launcher (hydra/launcher=joblib): Hydra instantiates launchers only from the ``hydra_plugins`` namespace."""
