"""Self-contained HTML reports (evaluation report, dataset audit, CAM gallery): shared building blocks."""
