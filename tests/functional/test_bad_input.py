"""SPEC section 5: every bad input gets a clear message, a non-zero exit, and
leaves the database as it was. Each test runs once cleanly, breaks one thing,
and checks message, exit code and a digest of every table."""

from __future__ import annotations

import os

import pytest

from tests.fixtures import data_files


def _fails(project, *args, code=1, contains=()):
    before = project.snapshot()
    r = project.cli(*args, expect=code)
    for c in contains:
        assert c in r.stderr, f"{c!r} not in:\n{r.stderr}"
    assert project.snapshot() == before, "the database changed"
    assert "Traceback" not in r.stderr
    return r


def test_malformed_yaml(built):
    built.write(
        "segments/segments.yml",
        built.read("segments/segments.yml").replace(
            "  - name: rfm", "  - name: rfm\n   bad: [indent"
        ),
    )
    r = _fails(built, "run", contains=["segments/segments.yml:", "malformed YAML"])
    assert ">" in r.stderr  # the numbered context lines mark the fault
    _fails(built, "validate", contains=["malformed YAML"])


def test_unknown_key_with_nearest(built):
    built.edit(
        "segments/segments.yml",
        "cluster: {method: kmeans, k: 3, seed: 7}",
        "cluster: {method: kmeans, k: 3, sed: 7}",
    )
    _fails(
        built,
        "run",
        contains=["segments/segments.yml:", "unknown key 'sed'", "did you mean 'seed'"],
    )


def test_incremental_only_option_in_yaml_points_at_the_yaml(built):
    """full_refresh=false on a table, set in models/schema.yml: the error names
    the YAML entry it came from, not the model's .sql file."""
    built.edit(
        "models/schema.yml",
        "  - name: stg_orders\n",
        "  - name: stg_orders\n    config: {materialized: table, full_refresh: false}\n",
    )
    line = built.read("models/schema.yml").splitlines().index("  - name: stg_orders") + 1
    r = _fails(
        built,
        "run",
        contains=[
            f"models/schema.yml:{line}",
            "model 'stg_orders' config: full_refresh=false applies to incremental models only",
        ],
    )
    assert "stg_orders.sql" not in r.stderr
    r = _fails(built, "validate", contains=[f"models/schema.yml:{line}"])
    # the models that read stg_orders are not bound against a missing table
    assert "does not exist" not in r.stderr and r.stderr.rstrip().endswith("1 error"), r.stderr


def test_unknown_ref(built):
    built.edit("models/user_features.sql", "ref('stg_orders')", "ref('stg_order')")
    _fails(
        built,
        "run",
        contains=[
            "models/user_features.sql:",
            "no model named 'stg_order'",
            "did you mean 'stg_orders'",
        ],
    )


def test_unknown_source(built):
    built.edit("models/stg_orders.sql", "source('shop', 'orders')", "source('shop', 'order')")
    _fails(built, "validate", contains=["source('shop', 'order')", "shop.orders"])


def test_cycle(built):
    built.write("models/a.sql", "select * from {{ ref('b') }}")
    built.write("models/b.sql", "select * from {{ ref('a') }}")
    r = _fails(built, "run", contains=["dependency cycle", "model.a", "model.b"])
    assert (
        "model.a -> model.b -> model.a" in r.stderr or "model.b -> model.a -> model.b" in r.stderr
    )


def test_sql_error_names_compiled_file_and_line(built):
    built.edit(
        "models/user_features.sql", "count(o.order_id) as orders,", "count(o.order_idx) as orders,"
    )
    r = _fails(built, "run", contains=["order_idx"])
    assert "models/user_features.sql:" in r.stderr
    assert ":6" in r.stderr or "LINE" in r.stderr or ":5" in r.stderr
    _fails(built, "validate", contains=["order_idx", "models/user_features.sql:"])


def test_a_value_that_does_not_convert_is_blamed_on_the_data(built):
    """A cast in the view stg_orders fails on 'N/A' while user_features is
    built: DuckDB's location was shown as a line of user_features that has
    nothing to do with it, under an empty excerpt."""
    built.edit(
        "models/stg_orders.sql",
        "category, amount,",
        "category, cast(amount as varchar) as amount_text,",
    )
    built.write(
        "models/stg_orders.sql",
        built.read("models/stg_orders.sql").replace(
            "cast(amount as varchar) as amount_text,",
            "cast(case when order_id = 1 then 'N/A' else cast(amount as varchar) end as double) as amount,",
        ),
    )
    r = _fails(built, "run", code=1, contains=["Could not convert string 'N/A' to DOUBLE"])
    first = r.stderr.splitlines()[0]
    assert first.startswith("models/user_features.sql: model 'user_features' failed ("), first
    assert "a value in the data does not convert" in r.stderr and "^" not in r.stderr


def test_sql_error_shows_one_line_number_the_files(built):
    """Jinja moves lines (a config block, a multi-line set): the message names
    the model file's line everywhere, and the compiled line only as context."""
    sql = built.read("models/user_features.sql")
    built.write(
        "models/user_features.sql",
        "{% set note = 'a\nmulti-line\nvalue' %}\n"
        + sql.replace("count(o.order_id) as orders,", "count(o.order_idx) as orders,"),
    )
    r = _fails(built, "validate", contains=["order_idx"])
    line = next(
        i
        for i, ln in enumerate(built.read("models/user_features.sql").splitlines(), 1)
        if "order_idx" in ln
    )
    assert f"models/user_features.sql:{line}:" in r.stderr
    assert f"line {line}: " in r.stderr and "LINE " not in r.stderr
    carets = [ln for ln in r.stderr.splitlines() if ln.strip().startswith("^")]
    if carets:  # DuckDB points at the column: still under it after the relabel
        sql_line = next(
            ln for ln in r.stderr.splitlines() if ln.strip().startswith(f"line {line}:")
        )
        at = carets[0].index("^")
        assert sql_line[at : at + 11] == "o.order_idx"
    assert "of the compiled SQL" in r.stderr
    # the hint's `segtool compile` writes that file even though the project fails
    compiled_line = int(r.stderr.split("that is line ")[1].split()[0])
    compiled = built.root / "target/compiled/models/user_features.sql"
    compiled.unlink(missing_ok=True)
    _fails(built, "compile", contains=["order_idx"])
    assert "o.order_idx" in compiled.read_text().splitlines()[compiled_line - 1]


def test_sql_runtime_error_rolls_back_every_model(built):
    # binds fine, fails while running: the earlier models of this run are rolled back too
    built.edit("models/user_features.sql", "u.country,", "cast(u.country as integer) as country,")
    _fails(built, "run", contains=["target/run/models/user_features.sql", "Conversion Error"])


@pytest.mark.parametrize(
    "change, message",
    [
        ("select\n    u.user_id,", "has no key column 'user_id'"),
        ("group by all", "must have one row per user"),
        ("null_key", "NULL user_id"),
    ],
)
def test_key_column_problems(built, change, message):
    sql = built.read("models/user_features.sql")
    if change == "group by all":
        sql = sql.replace(
            "group by all", "group by all\n union all select 1, 'DE', 1, 1, 1, 'none', []"
        )
    elif change == "null_key":
        sql = sql.replace(
            "group by all", "group by all\n union all select null, 'DE', 1, 1, 1, 'none', []"
        )
    else:
        sql = sql.replace("u.user_id,", "u.user_id as uid,")
    built.write("models/user_features.sql", sql)
    r = _fails(built, "run", contains=[message])
    if change == "group by all":
        assert "1 (2 rows)" in r.stderr  # example keys


def test_template_syntax_error(built):
    built.write("templates/story.j2", "A shopper\n{% if orders %}\n no end")
    _fails(built, "run", contains=["templates/story.j2:", "template syntax error"])
    _fails(built, "validate", contains=["templates/story.j2:"])


def test_undefined_variable_in_template(built):
    built.write("templates/story.j2", "A shopper\nwith {{ ordres }} orders")
    _fails(
        built, "validate", contains=["templates/story.j2:2", "'ordres'", "did you mean 'orders'"]
    )


def test_undefined_attribute_names_user_and_line(built):
    built.write("templates/story.j2", "A shopper\nwith {{ products.nope }} orders")
    _fails(built, "run", contains=["templates/story.j2:2", "user_id", "undefined"])


def test_undefined_var_in_sql(built):
    built.edit("models/user_features.sql", 'var("as_of")', 'var("as_off")')
    _fails(built, "run", contains=["var('as_off') is not defined", "did you mean 'as_of'"])


def test_locked_database(built):
    from segtool.state.lock import RunLock

    lock = RunLock(built.db, "segtool run").acquire()
    try:
        r = _fails(built, "run", contains=["is locked by `segtool run`", f"pid {os.getpid()}"])
        assert "since" in r.stderr
    finally:
        lock.release()
    built.cli("run")


def test_database_locked_by_another_process(built, tmp_path):
    import subprocess
    import sys

    code = f"import duckdb, time; c = duckdb.connect({str(built.db)!r}); print('ready', flush=True); time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        r = built.cli("run", expect=1)
        assert "locked" in r.stderr
    finally:
        p.kill()
        p.wait()


def test_empty_population(built):
    built.edit(
        "segments/segments.yml",
        "  - name: behaviour\n",
        '  - name: behaviour\n    population: "orders > 1000"\n',
    )
    _fails(built, "run", contains=["population is empty", "orders > 1000"])


def test_empty_population_of_rules(built):
    built.edit(
        "segments/segments.yml",
        "  - name: lifecycle\n",
        '  - name: lifecycle\n    population: "orders > 1000"\n',
    )
    _fails(
        built, "run", contains=["segmentation 'lifecycle'", "population is empty", "orders > 1000"]
    )


def test_k_larger_than_population(built):
    built.edit("segments/segments.yml", "k: 3,", "k: 500,")
    _fails(built, "run", contains=["k=500 is larger than the population (60 users)"])


def test_nan_features(built):
    built.edit(
        "models/user_features.sql",
        "coalesce(sum(o.amount), 0) as revenue",
        "coalesce(sum(o.amount), 0) + case when any_value(u.user_id) = 7 then 'nan'::double else 0 end as revenue",
    )
    r = _fails(built, "run", contains=["column 'revenue'", "NaN", "impute"])
    assert "7" in r.stderr


def test_an_imputed_column_with_no_finite_value_fails_before_any_write(built):
    """`impute: median` over a column that is NULL for everyone failed at the
    fit, after the models and texts were committed (run 2 'error', rerun the
    same), without a file or line."""
    built.edit(
        "models/user_features.sql",
        "coalesce(sum(o.amount), 0) as revenue",
        "cast(null as double) as revenue",
    )
    built.edit(
        "segments/segments.yml",
        "revenue: {transform: log1p}",
        "revenue: {transform: log1p, impute: median}",
    )
    _fails(
        built,
        "run",
        contains=[
            "segments/segments.yml:",
            "column 'revenue' of model 'user_features' has no finite value in the population "
            "to take the median of",
        ],
    )


def test_bad_rule_predicates(built):
    built.edit(
        "segments/segments.yml",
        'when: "revenue > 300"',
        'when: "revenue > 300; drop table user_features"',
    )
    _fails(built, "validate", contains=["not a single SQL expression"])
    _fails(built, "run", contains=["not a single SQL expression"])
    built.edit(
        "segments/segments.yml",
        'when: "revenue > 300; drop table user_features"',
        'when: "revenue >> > 300"',
    )
    _fails(built, "validate", contains=["invalid predicate"])


def test_inputs_with_different_user_sets(built):
    built.write(
        "models/other_features.sql", "select * from {{ ref('user_features') }} where user_id > 5"
    )
    built.edit(
        "segments/segments.yml",
        "  - name: rfm\n    model: user_features",
        "  - name: rfm\n    model: other_features",
    )
    _fails(built, "run", contains=["different user sets"])


def test_non_utf8_file(built):
    (built.root / "templates/story.j2").write_bytes(b"A shopper \xff\xfe\n")
    _fails(built, "run", contains=["templates/story.j2", "not valid UTF-8"])


def test_non_utf8_data(built):
    files = data_files()
    raw = files["data/users.csv"].encode().replace(b",DE", b",D\xffE", 1)
    (built.root / "data/users.csv").write_bytes(raw)
    r = _fails(built, "run", code=1)
    assert "utf" in r.stderr.lower() or "unicode" in r.stderr.lower()


def test_a_short_row_in_a_csv_is_named(built):
    """One row with a field too few made DuckDB read users.csv as one column
    named like the header line; every model then failed with 'column
    "signup_at" not found', blaming its SQL."""
    text = built.read("data/users.csv")
    n_lines = len(text.splitlines())
    built.write("data/users.csv", text.rstrip("\n") + "\n999,2024-01-01\n")
    message = (
        "source 'shop.users' cannot be read: data/users.csv was read as one column named "
        "'user_id,signup_at,country': its rows do not all have the same number of fields, "
        f"so no delimiter was found (users.csv line {n_lines + 1}: 2 fields, the header has 3)"
    )
    r = _fails(built, "run", contains=[message, "null_padding"])
    assert "Binder Error" not in r.stderr
    _fails(built, "validate", contains=[message])
    # the hint's options read the file, the short row padded with nulls
    built.edit(
        "models/sources.yml",
        "path: data/users.csv",
        "path: data/users.csv\n        options: {delim: ',', null_padding: true}",
    )
    built.cli("validate")


def test_empty_data_file(built):
    """A 0-byte users.csv bound as a table with a `column0`, and the error was
    'column "user_id" not found ... Candidate bindings: "column0"'."""
    (built.root / "data/users.csv").write_bytes(b"")
    message = "source 'shop.users' cannot be read: data/users.csv is empty (0 bytes)"
    r = _fails(built, "run", contains=[message])
    assert "column0" not in r.stderr
    _fails(built, "validate", contains=[message])
    built.write("data/users.csv", data_files()["data/users.csv"].splitlines()[0] + "\n")
    built.cli("validate")  # a header alone is an empty table, which is fine
    # so is an empty JSON feed whose columns are declared (one that is often empty)
    (built.root / "data/users.json").write_bytes(b"")
    line = next(
        ln for ln in built.read("models/sources.yml").splitlines() if "data/users.csv" in ln
    )
    indent = line[: len(line) - len(line.lstrip())]
    columns = "{user_id: BIGINT, signup_at: DATE, country: VARCHAR}"
    built.edit(
        "models/sources.yml",
        line,
        f"{indent}path: data/users.json\n{indent}format: json\n"
        f"{indent}options: {{format: newline_delimited, columns: {columns}}}",
    )
    built.cli("validate")


def test_missing_local_model(built):
    built.edit(
        "segments/segments.yml",
        "  - name: hash\n    kind: hashing\n    dim: 256",
        "  - name: hash\n    kind: transformers\n    model: ./models_dir/nope",
    )
    _fails(built, "validate", contains=["encoder 'hash'", "nope"])
    _fails(built, "run", contains=["encoder 'hash'", "nope", "the database was not changed"])


def test_hub_model_not_available_offline(built, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    built.edit(
        "segments/segments.yml",
        "  - name: hash\n    kind: hashing\n    dim: 256",
        "  - name: hash\n    kind: transformers\n    model: some-org/not-a-cached-model",
    )
    _fails(built, "run", contains=["some-org/not-a-cached-model"])


def test_overlong_text_is_truncated_counted_and_warned(project):
    project.edit("segments/segments.yml", "max_chars: 300", "max_chars: 40")
    r = project.cli("run")
    assert "cut to max_chars=40" in r.stdout
    assert project.sql(
        "select max(n_chars), count(*) filter (where truncated) from _segtool.texts__story"
    ) == [(40, 60)] or project.sql("select max(n_chars) <= 40 from _segtool.texts__story") == [
        (True,)
    ]


def test_emoji_and_empty_texts(project):
    project.write(
        "templates/story.j2", "{% if user_id % 2 == 0 %}🛒 {{ country }} ✨ naïve{% endif %}"
    )
    r = project.cli("run")
    texts = dict(project.sql("select user_id, text from _segtool.texts__story"))
    assert texts[2].startswith("🛒") and texts[1] == ""
    assert f"{sum(t == '' for t in texts.values())} empty texts" in r.stdout


def test_template_error_for_one_user(project):
    project.write("templates/story.j2", "Story\n{{ (100 / (user_id - 7)) | round }}")
    before = project.snapshot()
    r = project.cli("run", expect=1)
    assert "user_id 7" in r.stderr and "templates/story.j2:2" in r.stderr
    assert project.snapshot() == before


def test_disk_full(project, tmp_path, monkeypatch):
    """A database on a tiny tmpfs: the run fails with exit 1 and the real
    "No space left on device" (a ROLLBACK after the failed COMMIT used to hide
    it as "cannot rollback"); after freeing space the next run succeeds.
    Needs root (mount)."""
    import shutil
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    monkeypatch.setenv("SEGTOOL_DATA_DIRS", str(mnt))  # a database outside the project
    try:
        project.write("profiles.yml", f"targets:\n  dev: {{database: {mnt}/seg.duckdb}}\n")
        r = project.cli("run", expect=1)
        assert "disk full" in r.stderr and "No space left on device" in r.stderr
        assert "rollback" not in r.stderr.lower() and "Traceback" not in r.stderr
        assert not list((project.root / "target").glob("*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        project.cli("run")
        assert project.cli("show", "behaviour").stdout
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_target_settings_are_checked_where_they_are_written(built):
    """memory_limit 'lots' was 'internal error: ParserException', '0GB' an
    internal error at the first query and '-1GB' no limit; one bad target
    made `-t` call every other target 'not defined'."""
    for value, message in [
        ("lots", "a size like '4GB', '512MB' or '80%'"),
        ("0GB", "at least 64MB"),
        ("-1GB", "a size like '4GB'"),
    ]:
        built.write("profiles.yml", f"targets:\n  dev: {{memory_limit: '{value}'}}\n")
        r = _fails(built, "validate", contains=["profiles.yml:2:", message])
        assert "internal error" not in r.stderr
    # a device passed validate and failed at the embed stage of the run
    built.write("profiles.yml", "targets:\n  dev: {device: gpu0}\n")
    _fails(built, "validate", contains=["profiles.yml:2:", "device must be auto, cpu, cuda"])
    built.write(
        "profiles.yml",
        "targets:\n  dev: {memory_limit: 80%}\n  ci: {database: build/ci.duckdb}\n  zt: {threads: 0}\n",
    )
    r = _fails(built, "validate", "-t", "ci", contains=["profiles.yml:4:", "threads"])
    assert "not defined" not in r.stderr


def test_run_format_without_dry_run_is_a_usage_error(built):
    """`run --format json` ran and printed progress lines: a script parsing
    them as JSON learned nothing of the flag being ignored."""
    r = _fails(
        built, "run", "--format", "json", code=2, contains=["--format json is for --dry-run"]
    )
    assert "run_results.json" in r.stderr


def test_clip_quantiles_are_checked_by_validate(built):
    """clip: [0.9, 5] validated, then the run failed with 'internal error:
    ValueError: Quantiles must be in the range [0, 1]'."""
    for clip in ("[0.9, 5]", "[0.9, 0.1]"):
        built.edit(
            "segments/segments.yml",
            "orders: {transform: log1p}",
            f"orders: {{transform: clip, clip: {clip}}}",
        )
        _fails(
            built, "validate", contains=["segments/segments.yml:", "low below high, within [0, 1]"]
        )
        built.edit(
            "segments/segments.yml",
            f"orders: {{transform: clip, clip: {clip}}}",
            "orders: {transform: log1p}",
        )


def test_a_dry_run_refuses_another_projects_database_as_the_run_does(built):
    """A renamed project: the run refused the database, the dry run planned
    'every step skip' against it and exited 0."""
    built.edit("segtool_project.yml", "name: tiny", "name: tiny2")
    message = "database target/segtool.duckdb belongs to project 'tiny', not 'tiny2'"
    _fails(built, "run", "--dry-run", contains=[message])
    _fails(built, "run", contains=[message])


def test_a_var_set_to_null_is_refused_where_it_is_written(built):
    """`--vars '{as_of: null}'` compiled to DATE 'None': validate passed and
    the run failed at the model's query, far from the cause."""
    line = next(
        i
        for i, text in enumerate(built.read("models/user_features.sql").splitlines(), 1)
        if 'var("as_of")' in text
    )
    msg = "an expression writes None into the SQL"
    _fails(
        built,
        "run",
        "--vars",
        "{as_of: null}",
        contains=[f"models/user_features.sql:{line}: {msg}"],
    )
    _fails(built, "validate", "--vars", "{as_of: null}", contains=[msg])


def test_a_predicate_error_names_its_rule_and_yaml_line(built):
    """A var() error in a rule pointed at segments.yml line 1 (the predicate's
    own first line), without the rule."""
    built.edit("segments/segments.yml", '"revenue > 300"', "\"revenue > {{ var('big_at') }}\"")
    line = next(
        i
        for i, text in enumerate(built.read("segments/segments.yml").splitlines(), 1)
        if "big_at" in text
    )
    _fails(
        built,
        "run",
        contains=[
            f"segments/segments.yml:{line}: segmentation 'lifecycle' rule 'big'",
            "var('big_at') is not defined",
        ],
    )
    _fails(
        built,
        "run",
        "--vars",
        "{big_at: null}",
        contains=[
            f"segments/segments.yml:{line}: segmentation 'lifecycle' rule 'big'",
            "writes None",
        ],
    )
    # passed, read by the rule though not declared: no warning
    r = built.cli("validate", "--vars", "{big_at: 300}")
    assert "warning" not in r.stderr, r.stderr


def test_a_var_the_project_neither_declares_nor_reads_is_warned_about(built):
    """A typo in --vars ran silently with the declared value."""
    r = built.cli("validate", "--vars", "{as_off: '2024-06-01', run_id: 7}")
    assert (
        "warning: --vars sets 'as_off', which the project neither declares under `vars:` nor reads with var() (did you mean 'as_of'?)"
        in r.stderr
    )
    assert "--vars sets 'run_id'" in r.stderr
    assert "as_of'" not in r.stderr.split("'run_id'")[1]  # no 'did you mean' for a name like none
    # a var() whose name is an expression could read any name: nothing to say
    built.edit("models/user_features.sql", 'var("as_of")', "var('as_' ~ 'of')")
    assert "warning" not in built.cli("validate", "--vars", "{as_off: '2024-06-01'}").stderr


def test_a_cluster_option_the_method_never_reads_is_warned_about(built):
    """`min_cluster_size: 40` with kmeans ran as if it were not written."""
    seg = built.read("segments/segments.yml")
    cluster = next(
        ln.strip() for ln in seg.splitlines() if ln.strip().startswith("cluster: {method: kmeans")
    )
    line = next(i for i, t in enumerate(seg.splitlines(), 1) if "- name: behaviour" in t)
    assert "warning" not in built.cli("validate").stderr
    built.edit(
        "segments/segments.yml", cluster, cluster[:-1] + ", min_cluster_size: 40, k_range: [2, 5]}"
    )
    r = built.cli("validate")
    assert (
        f"warning: segments/segments.yml:{line}: segmentation 'behaviour': "
        "cluster.min_cluster_size is ignored: only hdbscan reads it, not kmeans" in r.stderr
    )
    assert "cluster.k_range is ignored: it is read only with `k: auto`" in r.stderr
    assert "ok:" in r.stdout  # a warning: files that ran before still run


def test_cluster_options_ignored_by_each_method():
    from segtool.project.specs import ClusterSpec

    def ignored(**kw):
        return [w.split(" is ignored")[0] for w in ClusterSpec(**kw).ignored()]

    assert ignored(method="kmeans", k=5) == []
    assert ignored(method="kmeans", k=5, seed=3, min_cluster_size=9) == ["cluster.min_cluster_size"]
    assert ignored(method="kmeans", k="auto", k_range=(2, 6), sample_size=500) == []
    assert ignored(method="gmm", k=4, sample_size=500) == ["cluster.sample_size"]
    assert ignored(method="agglomerative", k=4, sample_size=500) == []
    assert ignored(method="hdbscan", k=4, min_cluster_size=9, sample_size=500) == ["cluster.k"]
    assert ignored(method="hdbscan", k_range=(2, 4)) == ["cluster.k_range"]


def test_predicate_errors_point_at_the_predicates_own_line(built):
    """A population error pointed at the segmentation's `- name:` line, and an
    error on the second line of a `when: |` block one line above it."""

    def line_of(text):
        seg = built.read("segments/segments.yml").splitlines()
        return next(i for i, t in enumerate(seg, 1) if text in t)

    built.edit(
        "segments/segments.yml",
        '      - {segment: big, when: "revenue > 300"}',
        "      - segment: big\n        when: |\n          revenue > 300\n"
        "          and orders > {{ var('big_orders') }}",
    )
    built.edit(
        "segments/segments.yml",
        "    cluster: {method: kmeans, k: 3, seed: 7}",
        '    cluster: {method: kmeans, k: 3, seed: 7}\n    population: "orderz > 0"',
    )
    _fails(
        built,
        "validate",
        contains=[
            f"segments/segments.yml:{line_of('big_orders')}: segmentation 'lifecycle' rule 'big': "
            "var('big_orders') is not defined",
            f"segments/segments.yml:{line_of('orderz')}: segmentation 'behaviour' population: "
            "invalid predicate `orderz > 0`",
        ],
    )


@pytest.mark.parametrize(
    "sql, says",
    [
        (
            "{{ config(materialized='incremental', unique_key='oid') }}\n"
            "select order_id, amount from {{ ref('stg_orders') }}\n",
            "model 'inc' config: unique_key 'oid' is not a column of the model",
        ),
        (
            "{{ config(materialized='incremental', unique_key='user_id') }}\n"
            "select user_id, count(*) as {% if is_incremental() %}n_orders{% else %}n{% endif %}\n"
            "from {{ ref('stg_orders') }} group by user_id\n",
            "model 'inc': the is_incremental() branch returns other columns than the full build "
            "(n only without it; n_orders only with it)",
        ),
    ],
)
def test_an_incremental_model_that_cannot_merge_fails_validate(built, sql, says):
    """Both passed validate and the first run, and failed at the first merge
    (one pointing at compiled SQL; one with a --full-refresh hint that held
    for one run)."""
    built.write("models/inc.sql", sql)
    _fails(built, "validate", contains=["models/inc.sql", says])


@pytest.mark.parametrize("name", ["lifecycle_history", "Lifecycle"])
def test_a_segmentation_whose_table_is_another_ones_is_refused(built, name):
    """A segmentation named `lifecycle_history` replaced lifecycle's history
    table with its segments (validate: ok; every spell of lifecycle lost,
    as-of runs failed later with a binder error); table names ignore case."""
    built.edit(
        "segments/segments.yml",
        "  - name: lifecycle\n",
        f"  - name: {name}\n"
        "    model: user_features\n"
        '    rules: [{segment: buyer, when: "orders > 0"}]\n'
        "    default: none_yet\n"
        "  - name: lifecycle\n",
    )
    table = "lifecycle_history" if name == "lifecycle_history" else "lifecycle"
    for cmd in ("run", "validate"):
        _fails(
            built,
            cmd,
            contains=[
                "segments/segments.yml:",
                f"segmentation 'lifecycle' would write segments.{table}, the table of "
                f"segmentation '{name}'",
                "rename one of them",
            ],
        )


def test_a_disabled_model_that_yaml_nodes_read_is_named(built):
    """enabled=false on a model features, texts and segmentations read: validate
    said ok, run and dry run ended in 'internal error: KeyError'."""
    built.edit(
        "models/user_features.sql",
        "{{ config(materialized='table') }}",
        "{{ config(materialized='table', enabled=false) }}",
    )
    for args in (("run",), ("run", "--dry-run"), ("validate",)):
        _fails(
            built,
            *args,
            contains=[
                "segments/segments.yml:",
                "features 'rfm' reads model 'user_features', which is disabled (enabled=false",
                "hint: enable model 'user_features', or point features 'rfm' at another model",
            ],
        )


@pytest.mark.parametrize(
    "values, says",
    [
        # NOT IN a list with NULL is never true: the test passed whatever the column held
        ("[outdoor, null]", "a null among the values accepts nothing"),
        # YAML reads `no` as false: the column was compared to a boolean
        ("[outdoor, baby, no]", "False among text values is a YAML boolean"),
        ("outdoor", "values must be a non-empty list"),
        ("[outdoor], quote: false", "unknown argument 'quote'"),
    ],
)
def test_accepted_values_that_cannot_test_what_they_say_are_refused(built, values, says):
    built.edit(
        "models/schema.yml",
        "- accepted_values: {values: [outdoor, baby, gaming, none]}",
        f"- accepted_values: {{values: {values}}}",
    )
    _fails(built, "validate", contains=["models/schema.yml:", says])
    r = built.cli("test", expect=1)
    assert says in r.stdout + r.stderr


@pytest.mark.parametrize(
    "tests, says",
    [
        ("{min_share: 0.3, max_share: 0.1}", "min_share 0.3 is above max_share 0.1"),
        ("{max_share: 0.3}", "tests.max_share 0.3 with k 3: 3 segments of at most 30%"),
    ],
)
def test_segment_test_bounds_no_segmentation_can_meet_are_refused(built, tests, says):
    """They passed validate; `segtool test` then failed on every run."""
    built.edit(
        "segments/segments.yml", "tests: {min_share: 0.05, max_share: 0.9}", f"tests: {tests}"
    )
    _fails(built, "validate", contains=["segments/segments.yml:", says])


def test_a_rule_whose_literal_fails_on_the_data_names_the_rule(built):
    """A literal binding accepts but DuckDB cannot convert ('2024-02-30' for
    a date; '12 days' for a number) ended a dry run in 'internal error:
    ConversionException' and a run in 'database error' (exit 2), no line."""
    built.edit(
        "segments/segments.yml", 'when: "recency_days > 120"', "when: \"recency_days > '12 days'\""
    )
    for args in (("run", "--dry-run"), ("run",)):
        _fails(
            built,
            *args,
            contains=[
                "segments/segments.yml:",
                "segmentation 'lifecycle' rule 'lapsed' failed on the data: Conversion Error",
                "hint: a literal DuckDB cannot convert",
            ],
        )


def test_a_column_test_that_cannot_be_read_fails_alone_and_says_where(built):
    """An unknown test name stopped every test (exit 1, nothing run); an
    ERROR line never said where the test is declared."""
    built.edit(
        "models/schema.yml",
        "tests: [unique, not_null]",
        "tests: [unique, not_nul]",
    )
    r = built.cli("test", expect=1)
    out = r.stdout + r.stderr
    assert "ERROR not_nul(user_features.user_id): unknown test 'not_nul'" in out
    assert "        at models/schema.yml:" in out
    assert "PASS  unique(user_features.user_id)" in out
    assert "PASS  min_share(behaviour)" in out


def test_a_missing_source_file_says_so(built):
    """A source file not there (the example before its generate.py) was
    reported as the SQL fence's 'file system operations are disabled', with
    a hint to widen the fence."""
    (built.root / "data/orders.csv").unlink()
    for cmd in ("run", "validate"):
        r = _fails(
            built,
            cmd,
            contains=["source 'shop.orders' cannot be read: there is no file data/orders.csv"],
        )
        assert "fence" not in r.stderr
    built.edit("models/sources.yml", "path: data/orders.csv", "path: data/orders_*.csv")
    _fails(built, "validate", contains=["no file matches data/orders_*.csv"])


@pytest.mark.parametrize("key", ["segment", "run_id", "text"])
def test_a_key_named_like_a_column_segtool_writes_is_refused(built, key):
    """validate said ok; the run then failed ('Column with name "segment"
    already exists') or, for run_id, wrote the key as run_id and the run as
    run_id_1 in the segment table."""
    built.edit("segtool_project.yml", "key: user_id", f"key: {key}")
    _fails(
        built,
        "validate",
        contains=["segtool_project.yml:", f"the key '{key}' is a column segtool writes"],
    )
