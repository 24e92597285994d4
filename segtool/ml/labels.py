"""Human labels for segments: keywords from members' texts, distinguishing
features, and a short name made from them."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import numpy as np

from segtool.words import value_str

# tokens of at least 3 word characters with at least one letter (drops "42", "2024")
TOKEN_PATTERN = r"(?u)\b(?=\w*[^\W\d_])\w{3,}\b"
MAX_TEXTS_PER_CLUSTER = 2000


def keyword_labels(
    texts: Sequence[str],
    labels: np.ndarray,
    top_n: int,
    *,
    max_per_cluster: int = MAX_TEXTS_PER_CLUSTER,
    seed: int = 0,
    ngram_range: tuple[int, int] = (1, 2),
    max_df: float = 0.5,
    exclude: Collection[str] = (),
    min_doc_share: float = 0.0,
    min_lift: float = 1.0,
) -> dict[int, list[str]]:
    """Top `top_n` keywords per cluster label by class-based TF-IDF (c-TF-IDF,
    as in BERTopic).

    Each cluster is one "class document" made of (a seeded sample of at most
    `max_per_cluster` of) its members' texts. With c_{t,c} the count of term t
    in class c:  tf_{t,c} = c_{t,c} / sum_t c_{t,c};  idf_t = log(1 + A / f_t)
    where f_t = sum_c c_{t,c} and A = average number of terms per class;
    score = tf * idf. Terms: lowercase unigrams and bigrams of tokens with at
    least 3 characters (not pure numbers), English stop words removed; bigrams
    never span two users' texts. Terms found in more than `max_df` of all
    (sampled) texts are dropped: texts rendered from one template share its
    boilerplate ("ordered", "recently bought"), which would otherwise name
    every segment alike. Ties are broken alphabetically. Every label
    present (including -1) gets an entry; a cluster without terms gets [].

    So that a keyword is true of the segment it names:
    exclude        words the template writes for everyone (literal_words);
                   a term containing one is dropped: from "Has not ordered"
                   no segment is ever called "ordered"
    min_doc_share  a term must appear in at least this share of the
                   cluster's texts
    min_lift       ... and be at least this many times as common there as
                   in all texts
    """
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    labels = np.asarray(labels)
    if len(texts) != labels.shape[0]:
        raise ValueError(f"{len(texts)} texts but {labels.shape[0]} labels")
    classes = np.unique(labels)
    result: dict[int, list[str]] = {int(c): [] for c in classes}
    if top_n <= 0 or classes.size == 0:
        return result
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], classes, side="left").tolist() + [labels.size]
    docs: list[str] = []
    owner: list[int] = []
    for ci in range(classes.size):
        members = order[bounds[ci] : bounds[ci + 1]]
        if members.size > max_per_cluster:
            members = np.sort(rng.choice(members, size=max_per_cluster, replace=False))
        for i in members:
            t = texts[int(i)]
            docs.append(t if isinstance(t, str) else ("" if t is None else str(t)))
            owner.append(ci)
    cv = CountVectorizer(
        stop_words="english",
        token_pattern=TOKEN_PATTERN,
        ngram_range=ngram_range,
        lowercase=True,
        max_df=max_df if len(docs) >= 10 else 1.0,
    )
    try:
        X = cv.fit_transform(docs)
    except ValueError:  # empty vocabulary: only stop words / short tokens / boilerplate
        return result
    owner_arr = np.asarray(owner)
    indicator = sparse.csr_matrix(
        (np.ones(owner_arr.size), (owner_arr, np.arange(owner_arr.size))),
        shape=(classes.size, owner_arr.size),
    )
    counts = np.asarray((indicator @ X).todense(), dtype=np.float64)  # (classes, terms)
    totals = counts.sum(axis=1, keepdims=True)
    tf = counts / np.maximum(totals, 1.0)
    f_t = counts.sum(axis=0)
    A = counts.sum() / classes.size
    idf = np.log1p(A / np.maximum(f_t, 1.0))
    score = tf * idf[None, :]
    vocab = np.asarray(cv.get_feature_names_out())
    alpha = np.argsort(np.argsort(vocab))  # alphabetical rank per term
    allowed = np.ones(len(vocab), dtype=bool)
    if exclude:
        banned = {w.lower() for w in exclude}
        allowed = np.array([not (set(t.split()) & banned) for t in vocab], dtype=bool)
    doc_share = pop_share = None
    if min_doc_share > 0 or min_lift > 1.0:
        has = (X > 0).astype(np.float64)
        docs_per_class = np.bincount(owner_arr, minlength=classes.size).astype(np.float64)
        doc_share = np.asarray((indicator @ has).todense()) / docs_per_class[:, None]
        pop_share = np.asarray(has.sum(axis=0)).ravel() / max(len(docs), 1)
    for ci, c in enumerate(classes):
        ok = (counts[ci] > 0) & allowed
        if doc_share is not None:
            ok &= doc_share[ci] >= min_doc_share
            ok &= doc_share[ci] >= min_lift * pop_share
        present = np.flatnonzero(ok)
        if present.size == 0:
            continue
        best = present[np.lexsort((alpha[present], -score[ci, present]))][:top_n]
        result[int(c)] = vocab[best].tolist()
    return result


def feature_profile(
    X: np.ndarray, names: Sequence[str], labels: np.ndarray, top_n: int
) -> dict[int, list[dict]]:
    """Per cluster label, the `top_n` features whose cluster mean is farthest
    from the population mean, in population standard deviations:
    [{"name", "mean" (cluster mean, raw units), "z"}], largest |z| first.
    NaN values are ignored; a constant feature has z = 0."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    labels = np.asarray(labels)
    if X.shape[1] != len(names):
        raise ValueError(f"X has {X.shape[1]} columns but {len(names)} names")
    if X.shape[0] != labels.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but {labels.shape[0]} labels")
    out: dict[int, list[dict]] = {}
    if X.shape[0] == 0:
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            mu = np.nanmean(X, axis=0)
            sd = np.nanstd(X, axis=0)
            for c in np.unique(labels):
                m = np.nanmean(X[labels == c], axis=0)
                z = np.where((sd > 0) & np.isfinite(m), (m - mu) / sd, 0.0)
                order = sorted(range(len(names)), key=lambda j: (-abs(z[j]), names[j]))
                out[int(c)] = [
                    {"name": names[j], "mean": float(m[j]), "z": float(z[j])}
                    for j in order[: max(top_n, 0)]
                ]
    return out


def literal_words(texts: Sequence[str]) -> set[str]:
    """The lower-cased words of some text, as keyword_labels tokenises it."""
    out: set[str] = set()
    for t in texts:
        out.update(w.lower() for w in re.findall(TOKEN_PATTERN, t))
    return out


def trait_text(trait: dict) -> str:
    """How a trait reads in a label: "top category Books", "orders 0",
    "high revenue", "recent products incl. Kindle", "not subscribed".
    A value says itself as `segtool show` writes it (segtool.words.value_str):
    "revenue 1,383" (not 1.38e+03), "usual time 18:35", "account age 94 days"
    (stored as "18:35:00" and "94 days, 0:00:00")."""
    text = str(trait.get("text") or "")
    value = trait.get("value")
    if trait.get("kind") not in ("value", "contains") or value is None or isinstance(value, bool):
        return text
    said = value_str(value)
    if isinstance(value, (int, float)) or said != str(value):
        # a number, a timestamp, a time of day or an interval: with its column
        # ("94 days" alone does not say of what)
        rel = " incl." if trait.get("kind") == "contains" else ""
        text = f"{trait['column'].replace('_', ' ')}{rel} {said}"
    return text


def segment_label(traits: Sequence[dict], keywords: Sequence[str] = (), max_parts: int = 3) -> str:
    """A label made of what is true of the segment: its traits first (the
    values that set it apart, strongest driver first), then keywords of its
    texts (already filtered to be true of it), " · "-joined; "segment" when
    nothing sets it apart. Parts repeating a word already shown are skipped."""
    parts: list[str] = []
    seen: set[str] = set()
    budget_traits = max_parts - (1 if keywords else 0)
    shown: set[str] = set()
    for t in traits:
        if len(parts) >= max(budget_traits, 1):
            break
        text = trait_text(t)
        said = text.lower().split()
        if t.get("kind") in ("high", "low"):  # "high revenue", "recent signup at"
            said = said[1:]  # the qualifier is not what repeats
        words = set(said) - {"not", "incl."}
        value = str(t.get("value", "")).lower()
        # one value once: "top category Books" and "top viewed category Books"
        # say the same thing in a label; a trait with no words of its own left
        # (a value such as "Late" or "High") is never taken as said already
        if not text or (words and words <= seen) or (value and value in shown):
            continue
        parts.append(text)
        seen |= words
        if value:
            shown.add(value)
    for kw in keywords:
        if len(parts) >= max_parts:
            break
        words = set(kw.lower().split())
        if words <= seen:
            continue
        parts.append(kw)
        seen |= words
    return " · ".join(parts) if parts else "segment"


def segment_name(keywords: Sequence[str], features: Sequence[dict] = (), max_terms: int = 3) -> str:
    """A short human label: up to `max_terms` keywords joined by " · " (a
    bigram is skipped when its words are already shown), else the top two
    distinguishing features ("high revenue · low recency days"), else "segment"."""
    picked: list[str] = []
    seen: set[str] = set()
    for kw in keywords:
        words = set(kw.split())
        if words <= seen:
            continue
        picked.append(kw)
        seen |= words
        if len(picked) >= max_terms:
            break
    if picked:
        return " · ".join(picked)
    parts = []
    for f in features:
        z = float(f.get("z", 0.0))
        if abs(z) < 0.25:
            continue
        name = str(f["name"])
        if "=" in name:  # a one-hot column "col=value"
            col, val = name.split("=", 1)
            text = f"{col.replace('_', ' ')} {value_str(val)}"
            parts.append(text if z > 0 else f"not {text}")
        else:
            parts.append(f"{'high' if z > 0 else 'low'} {name.replace('_', ' ')}")
        if len(parts) >= 2:
            break
    return " · ".join(parts) if parts else "segment"
