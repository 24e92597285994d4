"""Numbers and nouns as the run's messages write them."""

from __future__ import annotations

from segtool.words import above, counted, with_article


def test_a_score_above_its_threshold_never_reads_as_equal_or_below():
    # a drift refit said 'drift 0.00 > 0.001' for a score of 0.0045
    assert above(0.0045, 0.001) == "0.004"
    assert above(0.47, 0.25) == "0.47"
    assert above(0.2501, 0.25) == "0.2501"
    assert above(0.25000001, 0.25) == "0.25"  # past 6 places: as %g


def test_articles_and_counts():
    assert with_article("incremental") == "an incremental"
    assert with_article("view") == "a view"
    assert counted(1, "user") == "1 user" and counted(1553, "row") == "1,553 rows"
