"""Documents for people: self-contained HTML reports (evaluation report, dataset audit, CAM gallery)
from shared building blocks, and the model card written beside a promoted checkpoint."""
