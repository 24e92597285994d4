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


def test_values_read_as_show_writes_them():
    """number_str, duration_str and value_str moved here from report/profile.py
    (labels in segtool/ml use them too); profile.py still has them."""
    from segtool.report import profile
    from segtool.words import duration_str, number_str, value_str

    assert number_str(1382.97) == "1,383" and number_str(0.125) == "0.125"
    assert duration_str(36 * 3600) == "1.5 days" and duration_str(1200) == "20 min"
    assert value_str("94 days, 0:00:00") == "94 days"
    assert value_str("18:35:16.500000") == "18:35:16" and value_str("18:35:00") == "18:35"
    assert value_str("3:00:00", interval=True) == "3 h" and value_str(1382.97) == "1,383"
    assert profile.number_str is number_str and profile._fmt_num is value_str
    # a huge value is not 301 digits in a label (1e300 made a 417-character one)
    assert number_str(1e300) == "1e+300" and number_str(-2.5e16) == "-2.5e+16"
    assert number_str(float("nan")) == "nan" and number_str(123_456_789_012) == "123,456,789,012"
