"""Dataset audit: is a real/fake dataset cheatable before anyone trains on it?

One module per check (basics, leakage, shortcuts, spectra), one pass over the images that feeds
them all (facts), and the pipeline that runs them and writes audit.json and audit.html.
"""
