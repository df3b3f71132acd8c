"""Feature drift: is the served traffic still like the training data?

    reference  each feature's (and the score's) binned distribution, measured at training and
               saved in the model's metadata; the bins, counting and the PSI (numpy only)
    monitor    in each API worker, a sliding window of served rows per model version and the
               PSI gauges it exports
    report     `python -m tabserve.drift`: a CSV or logged payloads against a stored model's
               reference, as a table and a PNG per drifted feature

docs/observability.md explains the Population Stability Index and its thresholds.
"""
