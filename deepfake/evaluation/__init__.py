"""How a detector is judged: operating points, calibration, uncertainty, robustness, plots, report.

Plain arrays and dicts in, plain values out: nothing here reads a config. ``targets`` are 1 for
fake (the positive class) and 0 for real; scores are logits or p(fake).
"""
