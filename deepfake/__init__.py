"""deepfake: train and evaluate real-vs-fake face image detectors."""

__version__ = "0.1.0"
