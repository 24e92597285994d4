from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from segtool.ml.labels import feature_profile, keyword_labels, segment_name
from segtool.ml.metrics import adjusted_rand, nmi, silhouette, transition_matrix
from segtool.ml.serialize import from_npz_bytes, to_npz_bytes

FILLER = "user bought items this month from the shop and paid with card online".split()
PLANTED = {
    0: ["trail", "hiking", "tent"],
    1: ["lipstick", "mascara", "serum"],
    2: ["console", "gamepad", "headset"],
}


def make_texts(n_per=300, seed=0):
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for c, words in PLANTED.items():
        for _ in range(n_per):
            toks = list(rng.choice(FILLER, 8)) + list(rng.choice(words, 2)) + ["42", "ok"]
            rng.shuffle(toks)
            texts.append(" ".join(toks))
            labels.append(c)
    return texts, np.array(labels)


def test_ctfidf_planted_vocabulary_on_top():
    texts, labels = make_texts()
    kw = keyword_labels(texts, labels, top_n=3)
    for c, words in PLANTED.items():
        assert sorted(kw[c]) == sorted(words)


def test_keywords_sampling_is_seeded_and_handles_edge_cases():
    texts, labels = make_texts(n_per=100)
    a = keyword_labels(texts, labels, 5, max_per_cluster=30, seed=1)
    b = keyword_labels(texts, labels, 5, max_per_cluster=30, seed=1)
    assert a == b and len(a[0]) == 5
    assert set(PLANTED[1]) <= set(a[1])
    assert keyword_labels(["the and", "of"], np.array([0, 1]), 3) == {0: [], 1: []}
    assert keyword_labels(texts, labels, 0) == {0: [], 1: [], 2: []}
    with pytest.raises(ValueError):
        keyword_labels(texts[:3], labels, 3)


def test_feature_profile_z_scores():
    X = np.array([[1.0, 5.0], [3.0, 5.0], [10.0, 5.0], [10.0, 5.0]])
    prof = feature_profile(X, ["revenue", "const"], np.array([0, 0, 1, 1]), top_n=2)
    mu, sd = X[:, 0].mean(), X[:, 0].std()
    assert prof[0][0]["name"] == "revenue"
    assert prof[0][0]["mean"] == pytest.approx(2.0)
    assert prof[0][0]["z"] == pytest.approx((2.0 - mu) / sd)
    assert prof[1][0]["z"] == pytest.approx((10.0 - mu) / sd)
    assert prof[1][1] == {"name": "const", "mean": 5.0, "z": 0.0}


def test_segment_name():
    assert segment_name(["trail", "hiking", "trail hiking", "tent"]) == "trail · hiking · tent"
    feats = [{"name": "revenue", "mean": 9, "z": 1.4}, {"name": "recency_days", "z": -0.8}]
    assert segment_name([], feats) == "high revenue · low recency days"
    assert segment_name([], [{"name": "top_category=books", "z": 2.0}]) == "top category books"
    assert segment_name([], []) == "segment"


def test_transition_matrix_and_scores_vs_sklearn():
    a = np.array([1, 1, 1, 2, 2, 3, 3, 3])
    b = np.array([5, 5, 6, 6, 6, 7, 7, 5])
    rows, cols, counts = transition_matrix(a, b)
    np.testing.assert_array_equal(rows, [1, 2, 3])
    np.testing.assert_array_equal(cols, [5, 6, 7])
    np.testing.assert_array_equal(counts, [[2, 1, 0], [0, 2, 0], [1, 0, 2]])
    assert adjusted_rand(a, b) == pytest.approx(adjusted_rand_score(a, b))
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b))
    assert adjusted_rand(a, a) == 1.0


def test_silhouette_wrapper():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    labels = np.repeat([0, 1], 50)
    assert silhouette(X, labels, sample_size=60, seed=0) > 0.9
    labels_noise = labels.copy()
    labels_noise[:3] = -1
    assert silhouette(X, labels_noise) > 0.9
    assert math.isnan(silhouette(X, np.zeros(100, dtype=int)))


def test_npz_helpers_roundtrip_and_refuse_objects():
    arrays = {"a": np.arange(5, dtype=np.float32), "b": np.eye(2)}
    back = from_npz_bytes(to_npz_bytes(arrays))
    assert set(back) == {"a", "b"} and back["a"].dtype == np.float32
    np.testing.assert_array_equal(back["b"], arrays["b"])
    with pytest.raises(TypeError):
        to_npz_bytes({"x": np.array([{"a": 1}], dtype=object)})


def test_template_words_and_negations_never_name_a_segment():
    """From "Has not ordered yet", no segment is labelled "ordered": words the
    template writes for everyone are excluded."""
    from segtool.compile.jinja import literal_text
    from segtool.ml.labels import literal_words

    template = (
        "{% if orders == 0 %}Has not ordered yet.{% else %}Ordered {{ top }} items.{% endif %}"
    )
    words = literal_words([literal_text(template)])
    assert {"has", "ordered", "yet", "items"} <= words and "top" not in words
    texts = ["Has not ordered yet."] * 20 + ["Ordered books items."] * 20
    labels = np.array([0] * 20 + [1] * 20)
    plain = keyword_labels(texts, labels, 3, max_df=1.0)
    assert "ordered" in plain[0]  # the old behaviour: a negated phrase named a segment
    kw = keyword_labels(texts, labels, 3, max_df=1.0, exclude=words)
    assert kw[0] == [] and kw[1] == ["books"]


def test_keywords_must_be_true_of_most_members():
    texts = ["tent trail"] * 3 + ["tent"] * 7 + ["sofa"] * 10
    labels = np.array([0] * 10 + [1] * 10)
    kw = keyword_labels(texts, labels, 5, max_df=1.0, min_doc_share=0.5, min_lift=1.5)
    assert kw[0] == ["tent"]  # "trail" is in 30% of segment 0 only
    assert kw[1] == ["sofa"]


def test_segment_label_prefers_traits_and_reads_well():
    from segtool.ml.labels import segment_label, trait_text

    traits = [
        {"column": "top_category", "kind": "value", "value": "Books", "text": "top category Books"},
        {"column": "orders", "kind": "value", "value": 0.0, "text": "orders 0.0"},
        {"column": "revenue", "kind": "high", "text": "high revenue"},
    ]
    assert trait_text(traits[1]) == "orders 0"
    assert segment_label(traits) == "top category Books · orders 0 · high revenue"
    # one keyword of support when there is one; traits first
    assert (
        segment_label(traits, ["mystery novels"])
        == "top category Books · orders 0 · mystery novels"
    )
    # a keyword repeating a shown word adds nothing
    assert segment_label(traits[:1], ["books"]) == "top category Books"
    assert segment_label([], ["tent", "trail"]) == "tent · trail"
    assert segment_label([], []) == "segment"


def test_a_label_keeps_values_that_are_also_qualifier_words():
    """'Late' or 'High' as a column's value is a fact, not the qualifier of
    'high revenue' or 'recent signup at': it stays in the label."""
    from segtool.ml.labels import segment_label

    late = {"column": "delivery_status", "kind": "value", "value": "Late", "text": "Late"}
    assert segment_label([late]) == "Late"
    high = {"column": "tier", "kind": "value", "value": "High", "text": "High"}
    recent = {"column": "signup_at", "kind": "high", "text": "recent signup at"}
    assert segment_label([high, recent]) == "High · recent signup at"
    # the qualifier alone does not make a part new: the same column is said once
    again = {"column": "signup_at", "kind": "low", "text": "early signup at"}
    assert segment_label([recent, again]) == "recent signup at"


def test_a_label_writes_numbers_times_and_intervals_as_show_does():
    """A label read 'revenue 1.383e+04', 'usual time 18:35:16.500000' or
    '94 days, 0:00:00' (an INTERVAL's value speaks for itself: 'days'), where
    `segtool show` writes '12,346', '18:35:16' and '94 days'."""
    from segtool.ml.labels import segment_label, segment_name, trait_text
    from segtool.report.profile import trait_str

    # high / low traits keep their medians as drivers store them (_plain):
    # a float, time.isoformat(), str(timedelta); the label says "high X"
    revenue = {"column": "revenue", "kind": "high", "text": "high revenue",
               "median": 1382.97, "base_median": 95.5}  # fmt: skip
    late = {"column": "usual_time", "kind": "high", "text": "late usual time",
            "median": "18:35:16.500000", "base_median": "12:00:00"}  # fmt: skip
    age = {"column": "account_age", "kind": "high", "text": "high account age",
           "median": "94 days, 0:00:00", "base_median": "3 days, 0:00:00"}  # fmt: skip
    assert segment_label([revenue, late, age]) == (
        "high revenue · late usual time · high account age"
    )
    assert trait_str(revenue) == "high revenue (median 1,383 vs 95.5)"
    assert trait_str(late) == "late usual time (median 18:35:16 vs 12:00)"
    assert trait_str(age) == "high account age (median 94 days vs 3 days)"

    # a value most members share is stored the same way: in the label as in show
    def value(column, v, text):
        return {"column": column, "kind": "value", "value": v, "text": text}

    spent = value("revenue", 1382.97, "revenue 1382.97")
    big = value("revenue", 12345.6, "revenue 12345.6")
    at = value("usual_time", "18:35:16.500000", "usual time 18:35:16.500000")
    noon = value("usual_time", "12:00:00", "usual time 12:00:00")
    span = value("account_age", "94 days, 0:00:00", "94 days, 0:00:00")
    signup = value("signup_at", "2024-03-01T10:00:00", "signup at 2024-03-01T10:00:00")
    assert trait_text(spent) == "revenue 1,383"
    assert trait_text(big) == "revenue 12,346"  # was 1.235e+04
    assert trait_text(at) == "usual time 18:35:16"
    assert trait_text(noon) == "usual time 12:00"
    assert trait_text(span) == "account age 94 days"
    assert trait_text(signup) == "signup at 2024-03-01"
    assert trait_text(value("orders", 3, "orders 3")) == "orders 3"
    assert trait_text(value("country", "DE", "country DE")) == "country DE"
    assert segment_label([big, at, span]) == (
        "revenue 12,346 · usual time 18:35:16 · account age 94 days"
    )
    # as show says each of them
    for t, said in ((big, "12,346"), (at, "18:35:16"), (span, "94 days")):
        assert trait_str({**t, "share": 0.9, "base_share": 0.1}).split(": ")[1].startswith(said)
    # a one-hot feature's value too
    assert segment_name([], [{"name": "slot=09:30:00", "z": 1.0}]) == "slot 09:30"
