"""Safety by default (docs/security.md), tried the way an attacker or a careless
user would: each case checks the exit code, the message (file:line where there
is one), and that the database and the file system are unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.fixtures import save_tiny_bert


def _tree(root) -> dict[str, str]:
    """Every file under root (the project, or a folder an attack writes to)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith((".wal", ".tmp")):
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _refused(project, *args, code=1, contains=(), outside=None):
    """Run a command that must fail, and prove it changed nothing."""
    before_db = project.snapshot()
    before_files = {k: v for k, v in _tree(project.root).items() if not k.startswith("target/")}
    before_outside = _tree(outside) if outside else None
    r = project.cli(*args, expect=code)
    for c in contains:
        assert c in r.stderr, f"{c!r} not in:\n{r.stderr}"
    assert "Traceback" not in r.stderr
    assert project.snapshot() == before_db, "the database changed"
    after_files = {k: v for k, v in _tree(project.root).items() if not k.startswith("target/")}
    assert after_files == before_files, "project files changed"
    if outside is not None:
        assert _tree(outside) == before_outside, "a file appeared outside the project"
    return r


# ----------------------------------------------------------------- smuggled statements


SMUGGLED = """select 1 as user_id;
ATTACH '{db}' AS prod;
DROP TABLE prod.segments.behaviour;
COPY (select 'x') TO '{out}/anything.csv';
select 1 as user_id
"""


def test_validate_compile_and_run_refuse_smuggled_statements(built, tmp_path):
    """The old binding check wrapped a model in `(...) LIMIT 0`: closing the
    parenthesis ran anything, and validate printed "ok"."""
    out = tmp_path / "outside"
    out.mkdir()
    built.write("models/evil.sql", SMUGGLED.format(db=built.db, out=out))
    for cmd in ("validate", "compile", "run"):
        r = _refused(built, cmd, outside=out, contains=["models/evil.sql:2:"])
        assert "more than one statement: an ATTACH statement follows the SELECT" in r.stderr
    assert built.sql("select count(*) from segments.behaviour")[0][0] == 60


def test_the_parenthesis_trick_is_a_parse_error(built, tmp_path):
    built.write(
        "models/evil.sql",
        "select 1 as user_id) t;\nDROP TABLE segments.behaviour;\nselect * from (select 1\n",
    )
    _refused(built, "validate", contains=["models/evil.sql:1:", "Parser Error"])
    _refused(built, "run", contains=["models/evil.sql:1:"])


def test_validate_and_compile_bind_without_executing(built):
    """A model that fails whenever it runs passes validate and compile: they
    bind (DESCRIBE) and never execute a model."""
    built.write(
        "models/boom.sql",
        "{{ config(materialized='table') }}\nselect error('executed!') as boom, 1 as user_id",
    )
    before = built.snapshot()
    built.cli("validate")
    built.cli("compile")
    assert built.snapshot() == before
    r = built.cli("run", "-s", "boom", expect=1)  # run does execute it
    assert "executed!" in r.stderr


def test_a_jinja_branch_cannot_hide_a_statement_from_validate(built, tmp_path):
    """validate once compiled sources to stubs, so `source() == ...` chose
    another branch than run did. Every rendering is checked now."""
    out = tmp_path / "outside"
    out.mkdir()
    built.write(
        "models/sneaky.sql",
        "{% if 'read_csv' in source('shop', 'users') %}\n"
        "select 1 as user_id;\n"
        f"COPY (select 1) TO '{out}/x.csv'\n"
        "{% else %}\nselect 1 as user_id\n{% endif %}\n",
    )
    _refused(built, "validate", outside=out, contains=["models/sneaky.sql:", "COPY statement"])
    _refused(built, "run", outside=out, contains=["models/sneaky.sql:"])


# ----------------------------------------------------------------- predicates


DOLLAR = (
    "orders = 0 AND $$'$$ <> $$x$$ ) FROM main.user_features ; DROP TABLE segments.lifecycle ; "
    "SELECT ( $$'$$ = $$x$$"
)


def test_dollar_quoted_predicate_cannot_escape(built):
    built.edit("segments/segments.yml", 'when: "revenue > 300"', f'when: "{DOLLAR}"')
    for cmd in ("validate", "run"):
        _refused(
            built,
            cmd,
            contains=["segments/segments.yml:", "rule 'big'", "not a single SQL expression"],
        )
    assert built.sql("select count(*) from segments.lifecycle")[0][0] == 60


@pytest.mark.parametrize("where", ["rule", "population"])
def test_vars_reach_a_predicate_only_as_values(built, where):
    if where == "rule":
        built.edit(
            "segments/segments.yml",
            'when: "revenue > 300"',
            "when: \"country = '{{ var('home') }}'\"",
        )
    else:
        built.edit(
            "segments/segments.yml",
            "  - name: lifecycle\n",
            "  - name: lifecycle\n    population: \"country <> '{{ var('home') }}'\"\n",
        )
    built.edit(
        "segtool_project.yml",
        'vars: {as_of: "2024-07-01"}',
        'vars: {as_of: "2024-07-01", home: DE}',
    )
    built.cli("validate")
    # a quote in the value stays inside the literal: a harmless comparison, no statement
    evil = '{home: "x\' ) ; DROP TABLE segments.lifecycle ; --"}'
    built.cli("run", "--vars", evil)
    assert built.sql("select count(*) from segments.lifecycle")[0][0] > 0
    # and DuckDB's dollar quoting through --vars is refused before anything runs
    built.edit("segments/segments.yml", "'{{ var('home') }}'", "{{ var('home') }}")
    _refused(
        built,
        "run",
        "--vars",
        json.dumps({"home": DOLLAR}),
        contains=["not a single SQL expression"],
    )


# ----------------------------------------------------------------- the fence


def test_models_cannot_read_outside_the_project(built):
    built.write("models/leak.sql", "select 1 as user_id, content from read_text('/etc/passwd')")
    r = _refused(built, "validate", contains=["models/leak.sql:1:", "Permission Error"])
    assert "profiles.yml" in r.stderr  # the hint says how to widen the fence
    _refused(built, "run", "-s", "leak", contains=["Permission Error"])
    assert "leak" not in {t for (t,) in built.sql("select table_name from duckdb_tables()")}


def test_the_fence_widens_only_as_far_as_the_environment_allows(built, tmp_path, monkeypatch):
    """profiles.yml is a project file a pull request can change: its
    allow_paths and external_access take effect within what the environment
    (SEGTOOL_DATA_DIRS, SEGTOOL_EXTERNAL_ACCESS) allows, never beyond."""
    monkeypatch.delenv("SEGTOOL_DATA_DIRS", raising=False)
    monkeypatch.delenv("SEGTOOL_EXTERNAL_ACCESS", raising=False)
    elsewhere = tmp_path / "shared_data"
    elsewhere.mkdir()
    (elsewhere / "extra.csv").write_text("user_id,note\n1,hello\n")
    built.write("models/extra.sql", f"select * from read_csv('{elsewhere}/extra.csv')")
    _refused(built, "run", "-s", "extra", contains=["Permission Error"])
    built.write("profiles.yml", f"targets:\n  dev: {{allow_paths: ['{elsewhere}/']}}\n")
    _refused(
        built,
        "run",
        "-s",
        "extra",
        contains=[
            f"profiles.yml: allow_paths of target 'dev': {elsewhere} lies outside the project folder",
            f"export SEGTOOL_DATA_DIRS={elsewhere}",
        ],
    )
    monkeypatch.setenv("SEGTOOL_DATA_DIRS", str(elsewhere))
    built.cli("run", "-s", "extra")
    assert built.sql("select note from main.extra") == [("hello",)]
    built.write("models/leak.sql", "select content from read_text('/etc/hostname')")
    _refused(built, "run", "-s", "leak", contains=["Permission Error"])
    built.write("profiles.yml", "targets:\n  dev: {external_access: true}\n")
    _refused(
        built,
        "run",
        "-s",
        "leak",
        contains=["target 'dev' sets external_access: true", "export SEGTOOL_EXTERNAL_ACCESS=1"],
    )
    monkeypatch.setenv("SEGTOOL_EXTERNAL_ACCESS", "1")
    built.cli("run", "-s", "leak")


def test_a_source_is_read_only_within_reach(built, tmp_path, monkeypatch):
    """A pull request declaring a source outside the project (or a symlink in
    data/ that leads out, or a file under .git, whose config can hold CI's
    token) gets an error from validate, which reads nothing of it."""
    monkeypatch.delenv("SEGTOOL_DATA_DIRS", raising=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "creds.csv").write_text("aws_key_AKIA1234,b\n1,2\n")
    (built.root / "data" / "link.csv").symlink_to(outside / "creds.csv")
    (built.root / ".git").mkdir()
    (built.root / ".git" / "config.csv").write_text("token_ghp_5678,b\n1,2\n")
    original = built.read("models/sources.yml")
    cases = {
        str(outside / "creds.csv"): f"{outside / 'creds.csv'} lies outside the project folder",
        "data/link.csv": f"(it leads to {outside / 'creds.csv'}) lies outside the project folder",
        ".git/config.csv": "config.csv lies in a hidden entry of the project folder",
    }
    for path, message in cases.items():
        built.write("models/sources.yml", original.replace("data/orders.csv", path))
        r = built.cli("validate", expect=1)
        assert (
            f"models/sources.yml:{_line_of(original, 'name: orders')}: source 'shop.orders': "
            in r.stderr
        )
        assert message in r.stderr, r.stderr
        assert "AKIA1234" not in r.output and "ghp_5678" not in r.output
        _refused(built, "run", contains=[message])
    # a model reading a hidden file, a file at the project's top (where a CI
    # login step writes gha-creds-*.json), or a link out of data/ directly:
    # the fence refuses them (absolute paths: relative ones resolve elsewhere)
    built.write("models/sources.yml", original)
    (built.root / "gha-creds-1.csv").write_text("private_key_9876,b\n1,2\n")
    for leak in (".git/config.csv", "gha-creds-1.csv", "data/link.csv", "data/*.csv"):
        built.write("models/leak.sql", f"select * from read_csv('{built.root}/{leak}')")
        r = built.cli("validate", expect=1)
        assert "Permission Error" in r.stderr, (leak, r.stderr)
        assert "ghp_5678" not in r.output and "9876" not in r.output and "AKIA" not in r.output
    # a glob source whose folder holds a link out: DuckDB resolves the link
    # and the fence refuses it (the reach check sees only the folder)
    built.write("models/leak.sql", "select 1 as x")
    built.write("models/sources.yml", original.replace("data/orders.csv", "data/*.csv"))
    r = built.cli("validate", expect=1)
    assert "Permission Error" in r.stderr and "AKIA" not in r.output
    # a data folder that contains the project does not open its hidden entries
    monkeypatch.setenv("SEGTOOL_DATA_DIRS", str(built.root.parent))
    built.write("models/sources.yml", original.replace("data/orders.csv", ".git/config.csv"))
    r = built.cli("validate", expect=1)
    assert "config.csv lies in a hidden entry of the project folder" in r.stderr
    # the operator lets the project read that folder: then it is a source like any
    built.write("models/leak.sql", "select 1 as x")
    monkeypatch.setenv("SEGTOOL_DATA_DIRS", str(outside))
    built.write("models/sources.yml", original.replace("data/orders.csv", "data/link.csv"))
    r = built.cli("validate", expect=1)  # its columns are not the orders' columns
    assert "lies outside" not in r.stderr


def _line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def test_views_over_sources_work_from_another_folder(built, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import duckdb

    con = duckdb.connect(str(built.db), read_only=True)
    try:
        assert con.execute("select count(*) from main.stg_orders").fetchall()[0][0] > 0
    finally:
        con.close()


# ----------------------------------------------------------------- privacy


PII_SCHEMA = """\
  - name: user_features
    description: One row per user.
    columns:
      - name: user_id
        tests: [unique, not_null]
      - name: country
        pii: true
"""


def test_pii_columns_stay_out_of_texts_unless_allowed(built):
    built.edit(
        "models/schema.yml",
        "  - name: user_features\n    description: One row per user.\n"
        "    columns:\n      - name: user_id\n        tests: [unique, not_null]\n",
        PII_SCHEMA,
    )
    r = _refused(
        built,
        "validate",
        contains=["templates/story.j2:1:", "'country', a PII column", "allow_pii"],
    )
    assert "models/schema.yml:" in r.stderr  # where it is marked
    _refused(built, "run", contains=["PII column"])
    built.edit(
        "segments/segments.yml",
        "    max_chars: 300",
        "    max_chars: 300\n    allow_pii: [country]",
    )
    built.cli("validate")


def test_pii_travels_downstream_by_name(built):
    built.edit(
        "models/sources.yml",
        "          - name: user_id\n            tests: [unique, not_null]",
        "          - name: user_id\n            tests: [unique, not_null]\n"
        "          - name: country\n            pii: true",
    )
    _refused(built, "validate", contains=["'country', a PII column", "models/sources.yml:"])


def test_pii_feature_columns_need_the_segmentation_to_allow_them(built):
    built.edit(
        "models/schema.yml",
        "      - name: top_category\n",
        "      - name: revenue\n        pii: true\n      - name: top_category\n",
    )
    _refused(built, "validate", contains=["segmentation 'behaviour'", "'revenue' is PII"])
    built.edit(
        "segments/segments.yml",
        "    cluster: {method: kmeans, k: 3, seed: 7}",
        "    cluster: {method: kmeans, k: 3, seed: 7}\n    allow_pii: [revenue]",
    )
    built.cli("validate")


def test_secrets_are_never_written(built, monkeypatch):
    secret_env = "s3cr3t-from-env"
    secret_var = "tok-9f8e7d6c"
    monkeypatch.setenv("SEGTOOL_TEST_SECRET", secret_env)
    built.edit(
        "models/stg_orders.sql",
        "from {{ source('shop', 'orders') }}",
        "from {{ source('shop', 'orders') }}\nwhere '{{ env_var(\"SEGTOOL_TEST_SECRET\") }}' <> '{{ var(\"api_token\") }}'",
    )
    built.edit(
        "segtool_project.yml",
        'vars: {as_of: "2024-07-01"}',
        'vars: {as_of: "2024-07-01", api_token: placeholder}\nsecret_vars: [api_token]',
    )
    built.cli("run", "--vars", json.dumps({"api_token": secret_var}))
    built.cli("compile")
    written = [
        built.root / "target/manifest.json",
        built.root / "target/run_results.json",
        built.root / "target/run/models/stg_orders.sql",
        built.root / "target/compiled/models/stg_orders.sql",
    ]
    for p in written:
        text = p.read_text()
        assert secret_env not in text and secret_var not in text, p
    assert "***" in (built.root / "target/run/models/stg_orders.sql").read_text()
    runs = json.dumps(built.sql("select args, summary from _segtool.runs"))
    assert secret_var not in runs and secret_env not in runs


def test_a_project_reads_only_segtool_variables_from_the_environment(built, monkeypatch):
    """CI runs `validate` on pull requests, and a pull request can change every
    file: a model reading AWS_SECRET_ACCESS_KEY could print it (reversed, past
    any masking) in a bind error. Only SEGTOOL_* and the names the operator
    lists in SEGTOOL_ENV_VARS are readable; the database is not touched."""
    monkeypatch.setenv("CI_CLOUD_KEY", "kX9-cloud-secret")
    monkeypatch.delenv("SEGTOOL_ENV_VARS", raising=False)
    before = _tree(built.root / "target")
    built.edit(
        "models/stg_orders.sql",
        "from {{ source('shop', 'orders') }}",
        "from \"{{ env_var('CI_CLOUD_KEY') | reverse }}\"",
    )
    for command in ("validate", "run"):
        r = built.cli(command, expect=1)
        assert "kX9-cloud-secret" not in r.output and "terces-duolc-9Xk" not in r.output
        assert (
            "models/stg_orders.sql:2: env_var('CI_CLOUD_KEY'): a project reads only "
            "SEGTOOL_* variables and those listed in SEGTOOL_ENV_VARS" in r.stderr
        )
        assert "export SEGTOOL_ENV_VARS=CI_CLOUD_KEY" in r.stderr
    assert _tree(built.root / "target") == before
    # the operator allows it, outside the project: it reads, and no masking can
    # hide a transformed value (why the rule is about reading, not printing)
    monkeypatch.setenv("SEGTOOL_ENV_VARS", "HOME, CI_CLOUD_KEY")
    r = built.cli("validate", expect=1)
    assert "Table with name terces-duolc-9Xk does not exist" in r.stderr


def test_values_read_from_the_environment_are_masked_in_error_messages(built, monkeypatch):
    monkeypatch.setenv("SEGTOOL_TEST_SECRET", "s3cr3t-from-env")
    built.edit(
        "models/stg_orders.sql",
        "from {{ source('shop', 'orders') }}",
        "from \"{{ env_var('SEGTOOL_TEST_SECRET') }}\"",
    )
    for args in (
        ("validate",),
        ("validate", "--format", "json"),
        ("validate", "--format", "github"),
        ("run",),
    ):
        r = built.cli(*args, expect=1)
        assert "s3cr3t-from-env" not in r.output, args
        assert "Table with name *** does not exist" in r.output, args


# ----------------------------------------------------------------- what a user keeps


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def _use_bert(project, folder):
    shutil.copytree(folder, project.root / "local_model")
    project.edit(
        "segments/segments.yml",
        "  - name: hash\n    kind: hashing\n    dim: 256",
        "  - name: hash\n    kind: transformers\n    model: ./local_model",
    )


def test_clean_cache_keeps_the_vectors_of_an_encoder_it_cannot_build(built, tiny_bert_dir):
    _use_bert(built, tiny_bert_dir)
    built.cli("run")
    n = built.n_vectors()
    assert n > 0
    (built.root / "local_model").rename(built.root / "moved_model")
    r = built.cli("clean", "--cache")
    assert "removed 0 unused vectors" in r.stdout
    assert "kept" in r.stdout and "encoder 'hash'" in r.stdout and "cannot be built" in r.stdout
    assert built.n_vectors() == n
    (built.root / "moved_model").rename(built.root / "local_model")
    built.cli("run")
    s = json.loads((built.root / "target/run_results.json").read_text())["summary"]
    assert s["embeddings"]["story.hash"]["action"] == "skip"


def test_a_models_own_code_runs_only_where_the_environment_names_the_model(
    built, tiny_bert_dir, monkeypatch
):
    """`trust_remote_code: true` beside a model folder of the pull request's
    own made CI's `segtool run` import that folder's Python (a file written on
    import proves it ran). Now validate and every command refuse the flag
    unless SEGTOOL_TRUST_REMOTE_CODE names the model."""
    from segtool.api import Project
    from segtool.errors import EncoderError

    monkeypatch.delenv("SEGTOOL_TRUST_REMOTE_CODE", raising=False)
    _use_bert(built, tiny_bert_dir)
    model = built.root / "local_model"
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_evil.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(built.root / 'ran')!r}).write_text('the model code ran')\n"
        "from transformers import BertModel as EvilModel\n"
    )
    built.edit(
        "segments/segments.yml",
        "    model: ./local_model",
        "    model: ./local_model\n    trust_remote_code: true",
    )
    refusal = (
        "encoder 'hash': trust_remote_code: true would run the code of model './local_model', "
        "which the environment must confirm"
    )
    r = built.cli("validate", expect=1)
    assert refusal in r.stderr and "export SEGTOOL_TRUST_REMOTE_CODE=./local_model" in r.stderr
    _refused(built, "run", contains=[refusal])
    with pytest.raises(EncoderError, match="which the environment must confirm"):
        Project.load(built.root).encoders().get("hash")  # assign, show, clean --cache
    assert not (built.root / "ran").exists()
    monkeypatch.setenv("SEGTOOL_TRUST_REMOTE_CODE", "someone/else, ./local_model")
    built.cli("validate")


def test_device_that_is_not_there_fails_before_any_write(built, tiny_bert_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _use_bert(built, tiny_bert_dir)
    _refused(built, "run", "--device", "cuda", contains=["CUDA is not available", "not changed"])


def test_export_and_assign_never_overwrite_the_database(built):
    _refused(built, "export", "behaviour", "-o", str(built.db), contains=["project database"])
    built.cli("export", "behaviour", "--format", "csv", "-o", str(built.root / "b.csv"))
    r = built.cli(
        "export", "behaviour", "--format", "csv", "-o", str(built.root / "b.csv"), expect=1
    )
    assert "exists" in r.stderr and "--force" in r.stderr
    built.cli("export", "behaviour", "--format", "csv", "-o", str(built.root / "b.csv"), "--force")
    built.cli(
        "export", "behaviour", "--format", "csv", "-o", str(built.root / "data/users.csv"), expect=1
    )
    _refused(
        built,
        "assign",
        "behaviour",
        "--input",
        str(built.root / "b.csv"),
        "--output",
        str(built.db),
        contains=["project database"],
    )
    assert built.sql("select count(*) from segments.behaviour")[0][0] == 60


def test_an_output_that_cannot_be_written_is_the_users_error(built, tmp_path):
    """-o under a file was 'internal error: FileExistsError' (exit 2) for
    export and docs; assign into a folder that did not exist scored every
    user, then failed with an internal FileNotFoundError."""
    a_file = built.root / "data/users.csv"
    for args in (
        ("export", "behaviour", "-o", str(a_file / "x.csv")),
        ("docs", "-o", str(a_file / "x.html")),
    ):
        r = _refused(built, *args, contains=[f"cannot write {a_file}/x."])
        assert "internal error" not in r.stderr
    import duckdb

    con = duckdb.connect(str(built.db), read_only=True)
    con.execute(f"COPY (SELECT * FROM user_features) TO '{tmp_path / 'in.parquet'}'")
    con.close()
    out = tmp_path / "new/folder/a.csv"
    built.cli("assign", "behaviour", "--input", str(tmp_path / "in.parquet"), "-o", str(out))
    assert out.is_file()


def test_no_output_reaches_the_database_through_a_link(built, tmp_path):
    """A hard link to the database passed as -o: export wrote Parquet over it,
    docs HTML, assign CSV (`show` then said 'not a valid DuckDB database
    file'). A symlink was refused already; one that leads nowhere crashed."""
    import os

    hard = tmp_path / "h.parquet"
    os.link(built.db, hard)
    before = built.db.read_bytes()
    _refused(
        built, "export", "behaviour", "-o", str(hard), "--force", contains=["project database"]
    )
    _refused(built, "docs", "-o", str(hard), "--force", contains=["project database"])
    # the default file, target/report/index.html, as a link a pull request can commit
    # (docs wrote its HTML over the database, and every command after it failed)
    report = built.root / "target/report/index.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.symlink_to("../segtool.duckdb")
    _refused(built, "docs", contains=["refusing to write over the project database"])
    report.unlink()
    built.cli("export", "behaviour", "--format", "csv", "-o", str(tmp_path / "b.csv"))
    os.link(built.db, tmp_path / "h.csv")
    _refused(
        built,
        "assign",
        "behaviour",
        "--input",
        str(tmp_path / "b.csv"),
        "-o",
        str(tmp_path / "h.csv"),
        "--force",
        contains=["project database"],
    )
    assert built.db.read_bytes() == before
    # a symlink to nowhere: written where it leads, as cp would
    (tmp_path / "d.parquet").symlink_to(tmp_path / "nothere.parquet")
    built.cli("export", "behaviour", "-o", str(tmp_path / "d.parquet"), "--force")
    import polars as pl

    assert pl.read_parquet(tmp_path / "nothere.parquet").height == 60


def test_init_force_does_not_replace_edited_files(tmp_path):
    from tests.conftest import ProjectDir

    p = ProjectDir(tmp_path / "shop")
    p.cli("init", str(p.root))
    p.edit(
        "models/user_features.sql",
        "select",
        "select -- my edit\n",
    )
    (p.root / "data/orders.csv").write_text("order_id\n1\n")
    (p.root / "models/stg_users.sql").unlink()
    before = _tree(p.root)
    r = p.cli("init", str(p.root), "--force", expect=1)
    assert "2 files differ from the template" in r.stderr
    assert "models/user_features.sql" in r.stderr and "data/orders.csv" in r.stderr
    assert "--force twice" in r.stderr
    assert _tree(p.root) == before  # nothing written, not even the missing file
    p.cli("init", str(p.root), "--force", "--force")
    assert "-- my edit" not in p.read("models/user_features.sql")
    p.edit("models/user_features.sql", "select", "select -- again\n")
    r = p.cli("init", str(p.root), "--force", expect=1)
    assert "1 file differs from the template" in r.stderr
    assert (p.root / "models/stg_users.sql").is_file()


def test_init_force_over_a_file_where_the_template_has_a_folder(tmp_path):
    """It copied half the template, then stopped with 'internal error: Error:
    [... File exists ...]'."""
    from tests.conftest import ProjectDir

    for rel, make in (("models", "file"), ("README.md", "folder")):
        p = ProjectDir(tmp_path / rel.replace(".", "_"))
        p.root.mkdir()
        if make == "file":
            (p.root / rel).write_text("x\n")
        else:
            (p.root / rel).mkdir()
        r = p.cli("init", str(p.root), "--force", "--force", expect=1)
        other = "folder" if make == "file" else "file"
        assert f"{p.root / rel} is a {make} where the template has a {other}" in r.stderr
        assert "internal error" not in r.stderr and [x.name for x in p.root.iterdir()] == [rel]


def test_init_writes_through_no_link_in_the_folder(tmp_path):
    """A folder someone else prepared: `README.md -> a file outside` was
    overwritten by `init --force --force`, a `data -> elsewhere` link took
    the sample files out of the folder with one --force, a dangling link
    failed halfway (internal error), and `init afile/sub` was an internal
    NotADirectoryError."""
    from tests.conftest import ProjectDir

    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for rel, to in (
        ("README.md", victim),
        ("data", elsewhere),
        ("data", tmp_path / "nothing-here"),
    ):
        p = ProjectDir(tmp_path / f"shop_{len(list(tmp_path.iterdir()))}")
        p.root.mkdir()
        (p.root / rel).symlink_to(to)
        r = p.cli("init", str(p.root), "--force", "--force", expect=1)
        assert f"{p.root / rel} is a symbolic link where the template writes" in r.stderr
        assert "nothing was written" in r.stderr and "internal error" not in r.stderr
        assert [x.name for x in p.root.iterdir()] == [rel]
    assert victim.read_text() == "mine\n" and not any(elsewhere.iterdir())
    (tmp_path / "afile").write_text("x\n")
    r = ProjectDir(tmp_path).cli("init", str(tmp_path / "afile/sub"), expect=1)
    assert f"cannot create {tmp_path / 'afile/sub'}: {tmp_path / 'afile'} is a file" in r.stderr


def test_key_type_change_is_explained_and_full_refresh_keeps_history(built):
    built.edit(
        "models/user_features.sql", "    u.user_id,", "    cast(u.user_id as varchar) as user_id,"
    )
    built.edit(
        "models/stg_orders.sql",
        "select order_id, user_id,",
        "select order_id, cast(user_id as varchar) as user_id,",
    )
    r = _refused(built, "run", contains=["is now VARCHAR", "holds it as BIGINT", "--full-refresh"])
    assert "Binder Error" not in r.stderr
    # a dry run of the fix cannot convert: it says so instead of "run with --full-refresh"
    r = _refused(built, "run", "--dry-run", "--full-refresh", contains=["is now VARCHAR"])
    assert "a dry run writes nothing, so it cannot plan past that" in r.stderr
    assert "run with --full-refresh" not in r.stderr
    history = built.sql("select count(*) from segments.behaviour_history")[0][0]
    r = built.cli("run", "--full-refresh")
    assert 'converted segments."behaviour_history".user_id from BIGINT to VARCHAR' in r.output
    assert built.sql(
        "select typeof(user_id), count(*) from segments.behaviour_history group by 1"
    ) == [("VARCHAR", history)]
    built.cli("run")


def test_k_auto_on_a_tiny_population_fails_before_any_write(built):
    built.edit(
        "segments/segments.yml",
        "    cluster: {method: kmeans, k: 3, seed: 7}",
        '    population: "user_id <= 2"\n    cluster: {method: kmeans, k: auto, seed: 7}',
    )
    _refused(built, "run", contains=["k: auto needs more users", "(2 users"])


def test_flags_that_would_do_nothing_are_refused(built):
    _refused(built, "run", "-s", "", contains=["empty selector"])
    _refused(built, "run", "-s", "tag:nothing", contains=["matched no node"])
    _refused(built, "run", "--threads", "0", code=2, contains=["--threads"])


@pytest.mark.parametrize(
    "template, what",
    [
        ("A shopper\n{{ (orders + 8) ** (10 ** 8) }}", "too large for the sandbox"),
        ("A shopper\n{{ 'x' * 10 ** 10 }}", "exceed the sandbox limit"),
        ("A shopper\n{{ '%1000000000d' % 1 }}", "exceed the sandbox limit"),
        ("A shopper\n{{ 'x' | center(10 ** 9) }}", "exceed the sandbox limit"),
        ("A shopper\n{{ 'x'.ljust(10 ** 9) }}", "exceed the sandbox limit"),
    ],
)
def test_templates_cannot_exhaust_memory_or_time(built, template, what):
    built.write("templates/story.j2", template)
    t0 = time.perf_counter()
    _refused(built, "run", contains=["templates/story.j2:2:", what])
    assert time.perf_counter() - t0 < 20


def test_a_runaway_loop_is_stopped_at_its_line(built, monkeypatch):
    monkeypatch.setenv("SEGTOOL_RENDER_TIMEOUT", "0.5")
    built.write(
        "templates/story.j2",
        "A shopper\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    )
    t0 = time.perf_counter()
    _refused(built, "run", contains=["templates/story.j2:2:", "took longer than 0.5s"])
    assert time.perf_counter() - t0 < 30


def test_killed_runs_are_marked_interrupted(built):
    import duckdb

    con = duckdb.connect(str(built.db))
    con.execute("UPDATE _segtool.runs SET status = 'running'")  # as a SIGKILL leaves it
    con.close()
    built.cli("run")
    assert built.sql("select run_id, status from _segtool.runs order by 1") == [
        (1, "interrupted"),
        (2, "success"),
    ]


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("Query interrupted"),  # what DuckDB 2.0 raises for SIGINT mid-query
        ValueError("reading the schema of '__segtool_vectors' failed: KeyboardInterrupt: "),
    ],
)
def test_ctrl_c_inside_a_query_is_an_interrupt(built, monkeypatch, error):
    """Ctrl-C while DuckDB ran a query ended the run as 'internal error:
    RuntimeError: Query interrupted' (exit 2, status error), not exit 130."""
    from segtool.execute.segment import store

    if isinstance(error, ValueError):  # DuckDB's own error type, its module duckdb
        import duckdb

        error = duckdb.InvalidInputException(str(error))

    def interrupted(*a, **k):
        raise error

    built.write("data/users.csv", built.read("data/users.csv") + "999,2024-01-01,DE\n")
    monkeypatch.setattr(store, "update_history", interrupted)
    r = built.cli("run", expect=130)
    assert "interrupted: results written before the interrupt are kept" in r.stderr
    assert "internal error" not in r.stderr
    assert built.sql("select status from _segtool.runs order by run_id desc limit 1") == [
        ("interrupted",)
    ]


def test_no_temporary_files_are_left_behind(built):
    built.cli("run")
    assert not [p for p in (built.root / "target").rglob("*.tmp")]
    assert os.path.exists(built.root / "target/run_results.json")


def test_an_internal_error_masks_what_the_command_read(monkeypatch, capsys):
    """The one message not built from a SegtoolError: masked as a whole."""
    from segtool.cli.common import _internal_error
    from segtool.project.secrets import Secrets, forget_read

    forget_read()
    monkeypatch.setenv("SEGTOOL_TEST_SECRET", "s3cr3t-from-env")
    Secrets().env_var("SEGTOOL_TEST_SECRET")
    with pytest.raises(SystemExit) as exited:
        _internal_error(RuntimeError("boom near s3cr3t-from-env"), {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom near ***" in err and "s3cr3t" not in err
    forget_read()


def test_a_project_file_that_leads_out_of_the_project_is_not_read(built, tmp_path):
    """A symlinked model, template or YAML file would be read and its parse
    error would quote what it read (`syntax error at or near "root"` for
    /etc/passwd)."""
    outside = tmp_path / "secret.txt"
    outside.write_text("aws_key_AKIA1234 = x\n")
    for rel in ("models/evil.sql", "templates/evil.j2", "segments/evil.yml"):
        link = built.root / rel
        link.symlink_to(outside)
        r = built.cli("validate", expect=1)
        assert (
            f"{rel}: project file {link} (it leads to {outside}) lies outside the project folder"
            in r.stderr
        )
        assert "AKIA1234" not in r.output and "aws_key" not in r.output
        _refused(built, "run", contains=["lies outside the project folder"])
        link.unlink()
    built.cli("validate")


def test_compile_renders_samples_only_from_a_database_within_reach(built, tmp_path, monkeypatch):
    """compile is safe on a pull request, which can point profiles.yml at any
    database file on the machine: its sample texts come only from one in the
    project folder or in SEGTOOL_DATA_DIRS."""
    monkeypatch.delenv("SEGTOOL_DATA_DIRS", raising=False)
    elsewhere = tmp_path / "prod"
    elsewhere.mkdir()
    shutil.copy(built.db, elsewhere / "prod.duckdb")
    built.write("profiles.yml", f"targets:\n  dev: {{database: '{elsewhere}/prod.duckdb'}}\n")
    shutil.rmtree(built.root / "target" / "samples", ignore_errors=True)
    r = built.cli("compile")
    assert (
        f"no sample texts: the database {elsewhere}/prod.duckdb lies outside the project folder"
        in r.stdout
    )
    assert not (built.root / "target" / "samples").exists()
    monkeypatch.setenv("SEGTOOL_DATA_DIRS", str(elsewhere))
    built.cli("compile")
    assert (built.root / "target" / "samples" / "story.md").is_file()


def test_segtool_writes_through_a_committed_target_symlink_only_within_reach(
    project, tmp_path, monkeypatch
):
    """A pull request can commit `target` as a symlink (git keeps symlinks):
    `compile`, safe on a pull request, wrote its manifest and compiled SQL
    wherever it led. Now target/ must resolve within the project folder or
    SEGTOOL_DATA_DIRS, as data must (a big disk is one line of environment)."""
    monkeypatch.delenv("SEGTOOL_DATA_DIRS", raising=False)
    outside = tmp_path / "runner_home"
    outside.mkdir()
    (outside / "keep.txt").write_text("the runner's file\n")
    link = project.root / "target"
    shutil.rmtree(link, ignore_errors=True)
    link.symlink_to(outside)
    message = f"target folder {link} (it leads to {outside}) lies outside the project folder"
    for command in ("compile", "run", "clean"):
        r = project.cli(command, expect=1)
        assert message in r.stderr, r.stderr
        assert "SEGTOOL_DATA_DIRS" in r.stderr
    assert _tree(outside) == {"keep.txt": hashlib.sha256(b"the runner's file\n").hexdigest()}
    project.cli("validate")  # validate writes nothing: a symlinked target does not stop it
    monkeypatch.setenv("SEGTOOL_DATA_DIRS", str(outside))
    project.cli("run")
    assert (outside / "manifest.json").is_file()


def test_a_symlink_inside_target_does_not_lead_writes_out(built, tmp_path):
    """`target/compiled` (or samples/, report/) committed as a symlink to a
    folder of the runner: compile refuses before writing there."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for sub, command in (("compiled", "compile"), ("report", "docs")):
        link = built.root / "target" / sub
        shutil.rmtree(link, ignore_errors=True)
        link.symlink_to(outside)
        r = built.cli(command, expect=1)
        assert f"leads to {outside}" in r.stderr and "remove the symlink" in r.stderr, r.stderr
        assert list(outside.iterdir()) == [], "a file was written through the symlink"
        link.unlink()


def test_a_reader_option_name_cannot_carry_sql(built, tmp_path):
    """An options key was pasted into the reader call as written: validate ran
    `...); COPY (...) TO 'models/pwned.sql' ...` and wrote the file."""
    original = built.read("models/sources.yml")
    key = (
        "header = true); COPY (SELECT 'pwned' AS x) TO 'models/pwned.sql' (HEADER false); "
        "SELECT * FROM read_csv('data/orders.csv', header"
    )
    built.write(
        "models/sources.yml",
        original.replace(
            "path: data/orders.csv", f'path: data/orders.csv\n        options: {{"{key}": true}}'
        ),
    )
    for cmd in ("validate", "compile", "test", "run"):
        _refused(
            built, cmd, contains=['reader option "header = true); COPY', "is not an option name"]
        )
    assert not (built.root / "models" / "pwned.sql").exists()


def test_a_database_holding_macros_is_refused(built):
    """A stored macro replaces a built-in in every query: `current_setting(x)
    AS true` made setup_connection take the connection for fenced, and a
    view then read /etc/passwd in `segtool test`; `diff --data` had no fence."""
    import duckdb

    con = duckdb.connect(str(built.db))
    con.execute("CREATE MACRO main.current_setting(x) AS true")
    con.close()
    for cmd in (("test",), ("run",), ("diff", "--data"), ("show", "behaviour"), ("docs",)):
        r = built.cli(*cmd, expect=1)
        assert "holds SQL macros segtool did not create (current_setting)" in r.stderr, (
            cmd,
            r.stderr,
        )
    con = duckdb.connect(str(built.db))
    con.execute("DROP MACRO main.current_setting")
    con.close()
    built.cli("show", "behaviour")


def test_data_may_not_be_the_project_folder_or_a_file_at_its_top(built, monkeypatch):
    """A glob source whose folder is the project's (`dat[a]/orders.csv`), or
    `allow_paths: [.]`, opened .git/config and .env to every model; a source
    could name a CI login's gha-creds-*.json at the top and print it in a test."""
    monkeypatch.delenv("SEGTOOL_DATA_DIRS", raising=False)
    (built.root / ".env").write_text("TOKEN=sekret_4321\n")
    (built.root / "gha-creds-1.csv").write_text("private_key,b\nGCPSECRET_55,2\n")
    original = built.read("models/sources.yml")
    for path, says in (
        (
            "dat[a]/orders.csv",
            f"source 'shop.orders': the folder of dat[a]/orders.csv, {built.root} is the project folder itself",
        ),
        ("gha-creds-1.csv", "gha-creds-1.csv is a file at the project's top"),
    ):
        built.write("models/sources.yml", original.replace("data/orders.csv", path))
        r = _refused(built, "validate", contains=[says])
        assert "GCPSECRET" not in r.output
    built.write("models/sources.yml", original)
    built.write("profiles.yml", "targets:\n  dev: {allow_paths: [.]}\n")
    _refused(built, "validate", contains=["is the project folder itself"])


def test_the_database_must_be_within_reach(built, tmp_path, monkeypatch):
    """profiles.yml could point `segtool test` (safe on a pull request) at any
    database on the machine and print its rows as test failures."""
    monkeypatch.delenv("SEGTOOL_DATA_DIRS", raising=False)
    elsewhere = tmp_path / "victim"
    elsewhere.mkdir()
    shutil.copy(built.db, elsewhere / "victim.duckdb")
    built.write("profiles.yml", f"targets:\n  dev: {{database: '{elsewhere}/victim.duckdb'}}\n")
    says = f"the database {elsewhere}/victim.duckdb lies outside the project folder"
    for cmd in (("test",), ("docs",), ("diff", "--data"), ("run",)):
        r = built.cli(*cmd, expect=1)
        assert says in r.stderr and "SEGTOOL_DATA_DIRS" in r.stderr, (cmd, r.stderr)
    monkeypatch.setenv("SEGTOOL_DATA_DIRS", str(elsewhere))  # the operator allows it
    built.cli("show", "behaviour")


def test_threads_are_at_most_the_cpus(built):
    import os

    built.write("profiles.yml", "targets:\n  dev: {threads: 3000}\n")
    from segtool import Project

    con = Project.load(built.root).connect(read_only=True)
    try:
        assert con.execute("SELECT current_setting('threads')").fetchone()[0] == os.cpu_count()
    finally:
        con.close()


def test_compile_runs_no_view_a_database_holds(built):
    """A committed database's view ran in compile's samples (one summing
    range(10^14) ran until killed): compile renders samples from tables only."""
    import duckdb

    con = duckdb.connect(str(built.db))
    con.execute("ALTER TABLE main.user_features RENAME TO uf")
    con.execute("CREATE VIEW main.user_features AS SELECT * FROM main.uf")
    con.close()
    shutil.rmtree(built.root / "target" / "samples", ignore_errors=True)
    r = built.cli("compile")
    assert (
        "no sample texts for 'story': model 'user_features' is a view, and compile runs no model SQL"
        in r.stdout
    )
    assert not (built.root / "target" / "samples" / "story.md").exists()
    # nor an expression a table holds: a generated column runs for every row read
    con = duckdb.connect(str(built.db))
    con.execute("DROP VIEW main.user_features")
    cols = ", ".join(f'"{n}" {t}' for n, t, *_ in con.execute("DESCRIBE main.uf").fetchall())
    con.execute(f"CREATE TABLE main.user_features ({cols}, heavy INTEGER AS (length(country)))")
    con.execute("INSERT INTO main.user_features BY NAME SELECT * FROM main.uf")
    con.close()
    r = built.cli("compile")
    assert "model 'user_features' has a generated column (heavy) segtool did not make" in r.stdout
    assert not (built.root / "target" / "samples" / "story.md").exists()


def test_a_link_to_the_project_folder_does_not_open_it(built, monkeypatch):
    """`ln -s . self` put the project folder among the readable folders:
    validate then printed .env and .git/config in a bind error."""
    monkeypatch.delenv("SEGTOOL_DATA_DIRS", raising=False)
    (built.root / ".env").write_text("SECRET=hunter2\n")
    (built.root / "self").symlink_to(".")
    built.write("models/leak.sql", f"select x from read_csv('{built.root}/.env', header=true)")
    r = built.cli("validate", expect=1)
    assert "Permission Error" in r.stderr and "hunter2" not in r.output


def test_what_is_not_a_duckdb_file_is_not_opened(built, tmp_path):
    """A committed SQLite file as the database made DuckDB download and load
    the sqlite extension before the fence; a committed WAL link would have
    had a run write its log where it leads."""
    import sqlite3

    db = built.db
    shutil.copy(db, tmp_path / "kept.duckdb")
    db.unlink()
    con = sqlite3.connect(db)
    con.execute("create table t (a)")
    con.commit()
    con.close()
    for cmd in (("test",), ("show", "behaviour")):
        r = built.cli(*cmd, expect=2)
        assert "is not a DuckDB database file" in r.stderr, r.stderr
    assert not (Path.home() / ".duckdb" / "extensions").exists() or not any(
        (Path.home() / ".duckdb" / "extensions").rglob("sqlite*")
    )
    shutil.copy(tmp_path / "kept.duckdb", db)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    wal = Path(f"{db}.wal")
    wal.unlink(missing_ok=True)
    wal.symlink_to(victim)
    r = built.cli("run", expect=2)
    assert "is a symbolic link: DuckDB would write the database's log where it leads" in r.stderr
    assert victim.read_text() == "precious\n"


def test_a_glob_that_loops_through_links_is_bounded(built, monkeypatch):
    """Two links to `.` in a glob source's folder made compile and dry runs
    walk 2^depth paths until killed. (At the real bound, 100,000 files, the
    walk takes ~10 s; a lower one shows the same.)"""
    monkeypatch.setattr("segtool.compile.sql.MAX_GLOB_FILES", 2_000)
    folder = built.root / "data" / "o"
    folder.mkdir()
    (folder / "orders.csv").write_text(built.read("data/orders.csv"))
    (folder / "a").symlink_to(".")
    (folder / "b").symlink_to(".")
    built.edit("models/sources.yml", "path: data/orders.csv", 'path: "data/o/**/*.csv"')
    r = built.cli("compile", expect=1)
    assert "matches more than 2,000 files" in r.stderr


def test_read_commands_refuse_another_project_s_database(built):
    """Only `run` checked whose database it was: after a rename (or a target
    pointing at another project's database) `show` listed the other project's
    segments and `test` printed `2 passed` against them."""
    text = built.read("segtool_project.yml")
    old = next(ln for ln in text.splitlines() if ln.startswith("name:"))
    built.write("segtool_project.yml", text.replace(old, "name: other_project"))
    for args in (("show", "lifecycle"), ("test",), ("export", "lifecycle")):
        r = built.cli(*args, expect=1)
        assert "belongs to project" in r.stderr and "not 'other_project'" in r.stderr, args
