"""What drives a segmentation, labels that are true, cross-tabs, scores
against known labels, and association tests, as a user meets them."""

from __future__ import annotations

import json

import pytest


def _show(project, *args):
    return json.loads(project.cli("show", *args, "--format", "json").stdout)


def test_show_lists_drivers_with_their_measure(built):
    prof = _show(built, "behaviour")
    drivers = {d["column"]: d for d in prof["drivers"]}
    # the tiny project plants its groups in what users buy, and (as a nuisance)
    # country goes with the group one to one
    assert drivers["top_category"]["measure"] == "cramers_v"
    assert drivers["top_category"]["value"] > 0.9
    assert drivers["country"]["value"] > 0.9
    assert drivers["orders"]["measure"] == "rank_eta2"
    assert all(0 <= d["value"] <= 1 and d["model"] == "user_features" for d in prof["drivers"])
    assert "user_id" not in drivers and "products" not in drivers  # the key, a list
    values = [d["value"] for d in prof["drivers"]]
    assert values == sorted(values, reverse=True)
    assert prof["drivers_run"] == 1
    assert prof["measures"]["rank_eta2"].startswith("rank η²")
    text = built.cli("show", "behaviour").stdout
    assert "drivers (run 1;" in text and "user_features.top_category" in text and "Cramér" in text
    assert "inputs (declared weight share" in text
    # rules segmentations have drivers too: the predicates' columns are among them
    rules = {d["column"]: d["value"] for d in _show(built, "lifecycle")["drivers"]}
    assert rules["revenue"] > 0.3 and rules["recency_days"] > 0.1


def test_rule_drivers_are_measured_again_when_the_rules_change(built):
    from tests.fixtures import data_files

    # new users only: the rules are the same, their drivers are kept
    for rel, content in data_files(extra_users=5).items():
        built.write(rel, content)
    built.cli("run")
    assert _show(built, "lifecycle")["drivers_run"] == 1
    # a rule changes: every user is evaluated again and the drivers measured anew
    built.edit("segments/segments.yml", "revenue > 300", "revenue > 250")
    built.cli("run")
    assert _show(built, "lifecycle")["drivers_run"] == 3


def test_labels_agree_with_the_members(built):
    """Every label part is true of the segment: a value it names is held by
    at least half its members (and more often than elsewhere), a "high X" sits
    above the population median."""
    prof = _show(built, "behaviour")
    rows = built.sql(
        "select s.segment_id, f.top_category, f.country, f.orders, f.revenue, f.recency_days "
        "from segments.behaviour s join user_features f using (user_id)"
    )
    cols = ["top_category", "country", "orders", "revenue", "recency_days"]
    checked = 0
    for seg in prof["segments"]:
        members = [dict(zip(cols, r[1:])) for r in rows if r[0] == seg["segment_id"]]
        everyone = [dict(zip(cols, r[1:])) for r in rows]
        assert seg["traits"], seg
        folded = [o for t in seg["traits"] for o in t.get("same_users", [])]
        for t in [*seg["traits"], *folded]:  # a folded trait is as true as its own
            if t["column"] not in cols:
                continue
            if t["kind"] == "value":
                share = sum(str(m[t["column"]]) == str(t["value"]) for m in members) / len(members)
                base = sum(str(m[t["column"]]) == str(t["value"]) for m in everyone) / len(everyone)
                assert share >= 0.5 and share >= 1.5 * base, (seg["segment"], t)
            elif t["kind"] in ("high", "low"):
                import statistics

                med = statistics.median(m[t["column"]] for m in members)
                pop = statistics.median(m[t["column"]] for m in everyone)
                assert (med > pop) if t["kind"] == "high" else (med < pop), (seg["segment"], t)
            checked += 1
        # the label is made of those traits (and keywords true of the members)
        first = seg["traits"][0]
        assert seg["segment"].split(" · ")[0] in (first["text"], str(first.get("value")))
    assert checked >= 3


def test_show_vs_without_a_segmentation_is_a_usage_error(built):
    """It was 'internal error: UsageError: ...': click's own errors pass through."""
    r = built.cli("show", "--vs", "country", expect=2)
    assert "Error: --vs needs a segmentation NAME" in r.stderr
    assert "internal error" not in r.stderr and "show [OPTIONS] [NAME]" in r.stderr


def test_show_vs_cross_tabs_a_column(built):
    ct = json.loads(
        built.cli("show", "behaviour", "--vs", "top_category", "--format", "json").stdout
    )
    assert ct["model"] == "user_features" and ct["association"]["measure"] == "cramers_v"
    assert set(ct["values"]) == {"outdoor", "baby", "gaming"}
    assert sum(r["users"] for r in ct["rows"]) == 60
    for r in ct["rows"]:
        assert sum(r["counts"]) == r["users"]
        assert max(r["shares"]) > 0.9  # each segment is one planted group
    num = json.loads(built.cli("show", "behaviour", "--vs", "revenue", "--format", "json").stdout)
    assert num["kind"] == "numeric (quantile bins)" and num["values"][0].startswith("≤ ")
    assert num["association"]["measure"] == "rank_eta2"
    text = built.cli("show", "behaviour", "--vs", "country").stdout
    assert "behaviour vs user_features.country" in text and "Cramér's V" in text
    # one column, one value: --vs measures as the drivers and max_association do
    vs = json.loads(built.cli("show", "behaviour", "--vs", "country", "--format", "json").stdout)
    prof = json.loads(built.cli("show", "behaviour", "--format", "json").stdout)
    driver = next(d for d in prof["drivers"] if d["column"] == "country")
    assert vs["association"]["value"] == driver["value"]
    assert vs["association"]["users"] == driver["n"] == 60
    # the key: cross-tabbed, but drivers do not measure it, and --vs says so
    key = json.loads(built.cli("show", "behaviour", "--vs", "user_id", "--format", "json").stdout)
    assert key["association"]["value"] is None and sum(r["users"] for r in key["rows"]) == 60
    assert "not measured" in built.cli("show", "behaviour", "--vs", "user_id").stdout

    before = built.snapshot()
    bad = built.cli("show", "behaviour", "--vs", "countri", expect=1)
    assert "has no column 'countri'" in bad.stderr and "did you mean 'country'?" in bad.stderr
    nested = built.cli("show", "behaviour", "--vs", "products", expect=1)
    assert "--vs takes a numeric, date or categorical column" in nested.stderr
    assert built.snapshot() == before


def test_show_vs_counts_values_named_like_its_own_buckets_as_themselves(built):
    """A real value '(null)' was counted with the NULLs and '(other)' with
    the pooled rest: headers twice, the real columns empty."""
    built.edit(
        "models/user_features.sql",
        "    u.country,",
        "    u.country,\n"
        "    case u.user_id % 4 when 0 then '(null)' when 1 then '(other)' "
        "when 2 then NULL else 'v' || (u.user_id % 40) end as tricky, 42 as one_num,",
    )
    built.cli("run", "--refit")  # drivers are measured at a fit
    truth = dict(
        built.sql("SELECT coalesce(tricky, 'NULL'), count(*) FROM user_features GROUP BY 1")
    )
    vs = json.loads(built.cli("show", "behaviour", "--vs", "tricky", "--format", "json").stdout)
    # the 10 commonest (both look-alikes among them), the rest, the NULLs
    assert len(set(vs["values"])) == len(vs["values"]) == 12, vs["values"]
    total = [sum(r["counts"][i] for r in vs["rows"]) for i in range(12)]
    shown = dict(zip(vs["values"], total))
    top = [v for v in vs["values"] if v not in ("(other values)", "(no value)")]
    assert {"(null)", "(other)"} <= set(top)
    assert all(shown[v] == truth[v] for v in top)
    assert shown["(no value)"] == truth["NULL"]
    # a numeric column of one value is not measured, as a categorical one is not
    # (it was rank η² 0.00 where the docs say null)
    one = json.loads(built.cli("show", "behaviour", "--vs", "one_num", "--format", "json").stdout)
    assert one["association"]["value"] is None
    prof = json.loads(built.cli("show", "behaviour", "--format", "json").stdout)
    assert "one_num" not in [d["column"] for d in prof["drivers"]]
    assert shown["(other values)"] == sum(n for v, n in truth.items() if v not in top + ["NULL"])


def test_show_vs_and_score_refuse_pii_columns(built):
    built.edit(
        "models/schema.yml",
        "      - name: top_category\n",
        "      - name: country\n        pii: true\n      - name: top_category\n",
    )
    r = built.cli("show", "behaviour", "--vs", "country", expect=1)
    assert "is PII" in r.stderr and "allow_pii" in r.stderr
    # score --truth COLUMN would print its values as the confusion table's header
    r = built.cli("score", "behaviour", "--truth", "country", expect=1)
    assert "is PII" in r.stderr and "allow_pii" in r.stderr


def test_a_column_marked_pii_leaves_the_stored_drivers_and_traits_at_once(built):
    """Drivers and traits are stored at the run that computed them: after
    `pii: true` on country, show and the report still listed country (and
    its values, in traits) until a refit."""

    def shown(name):
        prof = json.loads(built.cli("show", name, "--format", "json").stdout)
        cols = {d["column"] for d in prof["drivers"]}
        cols |= {t["column"] for s in prof["segments"] for t in s["traits"]}
        return cols

    assert "country" in shown("lifecycle")
    built.edit(
        "models/schema.yml",
        "      - name: top_category\n",
        "      - name: country\n        pii: true\n      - name: top_category\n",
    )
    assert "country" not in shown("lifecycle") and "top_category" in shown("lifecycle")
    # allowed where the segmentation declares it
    built.edit(
        "segments/segments.yml",
        "  - name: lifecycle\n",
        "  - name: lifecycle\n    allow_pii: [country]\n",
    )
    assert "country" in shown("lifecycle")


def test_score_reads_truth_as_assign_reads_input(built):
    """Float keys (1.0) matched no user ('the truth must use the key'), a JSON
    array was refused (`assign` reads one), a 0-byte file said 'no key column
    (columns: column0)', and --label-column beside a model column was ignored."""
    built.write("f.csv", "user_id,group\n" + "".join(f"{u}.0,g{u % 2}\n" for u in range(1, 31)))
    sc = json.loads(built.cli("score", "behaviour", "--truth", "f.csv", "--format", "json").stdout)
    assert sc["matched"] == 30
    # 1.5 is no user (DuckDB's cast rounds it to user 2): left out
    built.write("h.csv", "user_id,group\n" + "".join(f"{u}.5,g{u % 2}\n" for u in range(1, 31)))
    r = built.cli("score", "behaviour", "--truth", "h.csv", expect=1)
    assert "no user of 'behaviour' has a label" in r.stderr
    built.write("a.json", json.dumps([{"user_id": u, "g": f"g{u % 2}"} for u in range(1, 11)]))
    sc = json.loads(built.cli("score", "behaviour", "--truth", "a.json", "--format", "json").stdout)
    assert sc["matched"] == 10
    built.write("z.csv", "")
    assert (
        "z.csv is empty (0 bytes)"
        in built.cli("score", "behaviour", "--truth", "z.csv", expect=1).stderr
    )
    r = built.cli("score", "behaviour", "--truth", "country", "--label-column", "x", expect=1)
    assert "--label-column is for a truth file; --truth country is a column" in r.stderr
    r = built.cli("score", "behaviour", "--truth", "missng.csv", "--label-column", "x", expect=1)
    assert "--truth missng.csv: no such file" in r.stderr


def test_score_counts_each_user_once_and_labels_as_written(built):
    """A key written two ways ('1' and '01') is one user: counted twice, the
    scores were off ('401 of 400 users labelled'); labels 1 and 1.0, read as
    numbers, were one class."""
    built.write(
        "t.csv", "user_id,group\n" + "".join(f"{u},g{u % 2}\n" for u in range(1, 31)) + "01,g9\n"
    )
    r = built.cli("score", "behaviour", "--truth", "t.csv", expect=1)
    assert "the key 'user_id' is not unique once read as BIGINT: 1 as '01', '1'" in r.stderr
    labels = ["1", "1.0", "2", "2.5", "3", "3.50"]
    built.write(
        "n.csv", "user_id,group\n" + "".join(f"{u},{labels[u % 6]}\n" for u in range(1, 61))
    )
    sc = json.loads(built.cli("score", "behaviour", "--truth", "n.csv", "--format", "json").stdout)
    assert sc["truth_labels"] == 6 and sc["matched"] == 60


def test_a_trait_is_said_of_a_segment_s_members_not_of_those_with_a_value(project):
    """A segment where 1 of 10 members had a value was labelled with it, '100%
    vs 5%': the shares counted only members with a value (NULLs left out)."""
    project.edit(
        "models/user_features.sql",
        "count(o.order_id) as orders,",
        "count(o.order_id) as orders,\n"
        "    any_value(CASE WHEN u.user_id = 5 THEN 7 WHEN u.user_id > 40 THEN u.user_id END) as odd,\n"
        "    max(o.ordered_at) as last_order_at,",
    )
    project.write(
        "segments/segments.yml",
        project.read("segments/segments.yml")
        + "  - name: firsts\n    model: user_features\n"
        + '    rules: [{segment: first_ten, when: "user_id <= 10"}]\n    default: rest\n',
    )
    project.cli("run")
    prof = json.loads(project.cli("show", "firsts", "--format", "json").stdout)
    first = next(s for s in prof["segments"] if s["segment"] == "first_ten")
    assert not [t for t in first["traits"] if t["column"] == "odd"], first["traits"]
    # --vs on a date says so (drivers rank it as a number)
    vs = json.loads(
        project.cli("show", "firsts", "--vs", "last_order_at", "--format", "json").stdout
    )
    assert vs["kind"] == "date (quantile bins)"


def test_show_without_a_name_lists_segmentations(project):
    listing = json.loads(project.cli("show", "--format", "json").stdout)
    assert [r["segmentation"] for r in listing["segmentations"]] == ["behaviour", "lifecycle"]
    assert all(r["users"] is None for r in listing["segmentations"])  # not run yet
    project.cli("run")
    text = project.cli("show").stdout
    assert "behaviour" in text and "lifecycle" in text and "segtool show NAME" in text


def test_score_against_a_truth_file_and_a_column(built):
    from tests.fixtures import GROUPS

    groups = list(GROUPS)
    built.write(
        "truth.csv", "user_id,group\n" + "".join(f"{u},{groups[u % 3]}\n" for u in range(1, 61))
    )
    sc = json.loads(
        built.cli("score", "behaviour", "--truth", "truth.csv", "--format", "json").stdout
    )
    assert sc["matched"] == 60 and sc["truth_labels"] == 3
    assert sc["ari"] > 0.9 and sc["nmi"] > 0.9
    assert sum(r["users"] for r in sc["confusion"]) == 60
    text = built.cli("score", "behaviour", "--truth", str(built.root / "truth.csv")).stdout
    assert "adjusted Rand index" in text and "confusion" in text
    # a .tsv is tab-separated (as `assign` reads it), not one comma column
    built.write(
        "truth.tsv", "user_id\tgroup\n" + "".join(f"{u}\t{groups[u % 3]}\n" for u in range(1, 61))
    )
    tsv = json.loads(
        built.cli("score", "behaviour", "--truth", "truth.tsv", "--format", "json").stdout
    )
    assert tsv["matched"] == 60 and tsv["ari"] == sc["ari"]
    built.write("semi.csv", (built.root / "truth.csv").read_text().replace(",", ";"))
    semi = json.loads(
        built.cli("score", "behaviour", "--truth", "semi.csv", "--format", "json").stdout
    )
    assert semi["matched"] == 60 and semi["ari"] == sc["ari"]
    # a key that does not fit the table's type matches no user (it was an
    # internal ConversionException)
    built.write("odd.csv", (built.root / "truth.csv").read_text() + "é,baby\n")
    odd = json.loads(
        built.cli("score", "behaviour", "--truth", "odd.csv", "--format", "json").stdout
    )
    assert odd["matched"] == 60 and odd["ari"] == sc["ari"]
    col = json.loads(
        built.cli("score", "lifecycle", "--truth", "top_category", "--format", "json").stdout
    )
    assert col["truth"] == "user_features.top_category" and -1 <= col["ari"] <= 1

    before = built.snapshot()
    built.write("bad.csv", "id,group\n1,a\n")
    r = built.cli("score", "behaviour", "--truth", "bad.csv", expect=1)
    assert "has no key column 'user_id'" in r.stderr
    built.write("two.csv", "user_id,a,b\n1,x,y\n")
    r = built.cli("score", "behaviour", "--truth", "two.csv", expect=1)
    assert "--label-column" in r.stderr
    r = built.cli("score", "behaviour", "--truth", "nosuch", expect=1)
    assert "not a file" in r.stderr
    # a file name that is not there is not a column: every column was listed
    r = built.cli("score", "behaviour", "--truth", "data/nope.csv", expect=1)
    assert "--truth data/nope.csv: no such file" in r.stderr and "columns:" not in r.stderr
    # rows without a key match no user (they were "the key is not unique");
    # a repeated key is named
    built.write("blank.csv", (built.root / "truth.csv").read_text() + ",a\n,b\n")
    blank = json.loads(
        built.cli("score", "behaviour", "--truth", "blank.csv", "--format", "json").stdout
    )
    assert blank["matched"] == 60 and blank["ari"] == sc["ari"]
    built.write("dup.csv", (built.root / "truth.csv").read_text() + "7,a\n")
    r = built.cli("score", "behaviour", "--truth", "dup.csv", expect=1)
    assert "the key 'user_id' is not unique: 7 (2 rows)" in r.stderr
    # labels are values users share: not the key, not a list per user
    for column, why in (("user_id", "is the key"), ("products", "has type VARCHAR[]")):
        r = built.cli("score", "behaviour", "--truth", column, expect=1)
        assert f"column '{column}' {why}: the truth is a column of labels" in r.stderr, r.stderr
    assert built.snapshot() == before


@pytest.mark.parametrize(
    "tests_yaml, expect_fail, message",
    [
        ("{max_association: {country: 0.3}}", True, "country: cramers_v 1.000 is above 0.3"),
        ("{min_association: {top_category: 0.5}}", False, ""),
        ("{min_association: {user_features.revenue: 0.99}}", True, "is below 0.99"),
    ],
)
def test_association_tests(built, tests_yaml, expect_fail, message):
    built.edit(
        "segments/segments.yml",
        "tests: {min_share: 0.05, max_share: 0.9}",
        f"tests: {tests_yaml}",
    )
    built.cli("run")  # the copied project's views point at the old folder until a run
    r = built.cli("test", expect=1 if expect_fail else 0)
    assert message in r.stdout + r.stderr
    assert "association(behaviour, " in r.stdout


@pytest.mark.parametrize(
    "tests_yaml, message",
    [
        (
            "{max_association: {countri: 0.3}}",
            "names 'countri', which is not a column of user_features",
        ),
        (
            "{max_association: {products: 0.3}}",
            "names 'products', a column drivers do not measure (type VARCHAR[])",
        ),
        (
            "{min_association: {user_features.user_id: 0.3}}",
            "a column drivers do not measure (the key)",
        ),
        (
            "{max_association: {country: 0.3}}",
            "a column drivers do not measure (PII, pii: true at models/schema.yml:",
        ),
    ],
)
def test_association_tests_name_columns_drivers_measure(project, tests_yaml, message):
    """A typo, a list, the key or a PII column passed validate and failed every
    `segtool test` as if the data were wrong."""
    project.edit(
        "segments/segments.yml",
        "tests: {min_share: 0.05, max_share: 0.9}",
        f"tests: {tests_yaml}",
    )
    if "PII" in message:
        project.edit(
            "models/schema.yml",
            "      - name: top_category\n",
            "      - name: country\n        pii: true\n      - name: top_category\n",
        )
        project.edit("templates/story.j2", "A shopper from {{ country }} with", "A shopper with")
    r = project.cli("validate", expect=1)
    assert (
        f"segments/segments.yml:{project.read('segments/segments.yml').splitlines().index('  - name: behaviour') + 1}: segmentation 'behaviour' tests: "
        in r.stderr
    ), r.stderr
    assert message in r.stderr
    if "countri" in message:
        assert "did you mean 'country'?" in r.stderr


def test_association_bounds_are_validated(project):
    project.edit(
        "segments/segments.yml",
        "tests: {min_share: 0.05, max_share: 0.9}",
        "tests: {max_association: {country: 1.5}}",
    )
    r = project.cli("validate", expect=1)
    assert "must be between 0 and 1" in r.stdout + r.stderr


def test_association_tests_of_a_column_drivers_skip_say_why(project):
    """A column of one value for everyone: drivers skip it, and the test said
    "'plan' is not a column drivers can measure ...; did you mean 'plan'?"."""
    project.edit("models/user_features.sql", "u.country,", "u.country, 1 as plan,")
    project.edit(
        "segments/segments.yml",
        "tests: {min_share: 0.05, max_share: 0.9}",
        "tests: {max_association: {plan: 0.3}, min_association: {plan: 0.1}}",
    )
    project.cli("run")
    out = project.cli("test", "-s", "behaviour", expect=1).stdout
    assert "PASS  max_association(behaviour, plan)" in out
    assert (
        "FAIL  min_association(behaviour, plan): 'plan' has one value, no values or about one "
        "value per user in 'behaviour': its association is not measured, so it cannot be below 0.1"
    ) in out
    assert "did you mean" not in out
