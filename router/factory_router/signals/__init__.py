"""Load signals: the Prometheus snapshot (background, off the request path) and the
router's own passive signals (in-flight counts, observed time to first byte), combined
into the `policy.scoring.LoadView` the policy reads.
"""
