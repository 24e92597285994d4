"""What a fit computes, as a number: part of the fit hash
(segtool.compile.segments.fit_hash), so a project refits once when the
algorithm changes. Kept apart from pipeline.py so that planning a run does
not import numpy. 2: per-block PCA with exact block weights, k-means best of
many sampled starts, hdbscan k-NN vote."""

ALGORITHM_VERSION = 2
