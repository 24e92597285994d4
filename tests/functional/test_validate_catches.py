"""A green `segtool validate` means `segtool run` does not fail on a mistake
of the project's own that can be known without data. Each test breaks one
thing that validate passed and the run (or `segtool test`) failed on, and
checks validate names the file and line and says what to do."""

from __future__ import annotations

import pytest

from tests.conftest import ProjectDir

ASSOCIATION = "tests: {min_share: 0.05, max_share: 0.9}"


def _invalid(pd: ProjectDir, *contains: str, cmd: tuple[str, ...] = ("validate",)) -> str:
    r = pd.cli(*cmd, expect=1)
    for c in contains:
        assert c in r.stderr, f"{c!r} not in:\n{r.stderr}"
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def _line(pd: ProjectDir, rel: str, text: str) -> int:
    return next(i for i, ln in enumerate(pd.read(rel).splitlines(), 1) if text in ln)


# ----------------------------------------------------------------- A: unknown inputs


@pytest.mark.parametrize(
    "old, new, says",
    [
        ("{text: story,", "{text: stori,", "unknown text 'stori'"),
        ("{features: rfm,", "{features: rfmm,", "unknown features 'rfmm'"),
    ],
)
def test_an_unknown_input_of_a_segmentation_with_association_tests_is_reported(
    project, old, new, says
):
    """`internal error: KeyError` (exit 2) from validate, run and dry run:
    the association check looked the misspelt input up unchecked."""
    project.edit(
        "segments/segments.yml",
        ASSOCIATION,
        "tests: {min_share: 0.05, max_share: 0.9, max_association: {country: 0.9}}",
    )
    project.edit("segments/segments.yml", old, new)
    line = _line(project, "segments/segments.yml", new)
    for cmd in (("validate",), ("run", "--dry-run"), ("run",)):
        _invalid(project, f"segments/segments.yml:{line}", says, "did you mean", cmd=cmd)
    assert not project.db.exists() or not project.sql(
        "select * from information_schema.tables where table_schema = 'segments'"
    )


# ----------------------------------------------------------------- B: included templates, loops


def _include(pd: ProjectDir, part: str) -> None:
    pd.write("templates/parts/o.j2", part)
    pd.write("templates/story.j2", pd.read("templates/story.j2") + '{% include "parts/o.j2" %}\n')


def test_a_syntax_error_in_an_included_template_is_reported_at_its_own_line(project):
    """validate compiled the text's own template only; the run failed,
    blaming the line of the include."""
    _include(project, "Orders:\n{% if orders > 1 %}many\n")
    err = _invalid(project, "templates/parts/o.j2:", "template syntax error")
    assert "templates/story.j2" not in err


def test_an_included_template_reads_only_columns(project):
    """{{ orderz }} in an included template: validate ok, run failed with
    "'orderz' is undefined"."""
    _include(project, "Orders:\n{{ orderz }}\n")
    _invalid(
        project,
        "templates/parts/o.j2:2",
        "template 'parts/o.j2' (included by text 'story') uses 'orderz', "
        "which is not a column of model 'user_features'",
        "did you mean 'orders'",
    )


def test_an_included_template_may_read_what_its_includer_sets(project):
    """Names the including template sets (at its top level, or the loop it
    includes the part in) are the part's to read: no false alarm."""
    project.write(
        "templates/story.j2",
        project.read("templates/story.j2")
        + "{% set n = orders * 2 %}"
        + '{% for p in products %}{% include "parts/o.j2" %}{% endfor %}\n',
    )
    project.write("templates/parts/o.j2", "{{ p }} {{ n }} {{ country }} {{ var('as_of') }}\n")
    r = project.cli("validate")
    assert "no errors" in r.stdout


def test_a_loop_variable_read_after_its_loop_is_reported(project):
    """`{% for p in products %}...{% endfor %} Top: {{ p }}`: validate ok (every
    stored name counted as set), run failed "'p' is undefined"."""
    project.write(
        "templates/story.j2",
        project.read("templates/story.j2")
        + "{% set ns = namespace(last='') %}\n"
        + "{% for p in products %}{{ p }}{% set ns.last = p %}{% endfor %}\n"
        + "Last: {{ ns.last }}.\n"
        + "Top: {{ p }}.\n",
    )
    line = _line(project, "templates/story.j2", "Top: {{ p }}")
    _invalid(
        project,
        f"templates/story.j2:{line}",
        "uses 'p' where it is not set",
        "a loop's variables exist inside the loop only",
    )


# ----------------------------------------------------------------- C: var() and env_var()


def test_var_and_env_var_in_templates_are_checked(project, monkeypatch):
    """Each passed validate and failed the run (SQL and predicates are
    rendered by validate; a text only by the run)."""
    monkeypatch.delenv("SEGTOOL_NOPE", raising=False)
    monkeypatch.delenv("SEGTOOL_ENV_VARS", raising=False)
    project.write(
        "templates/story.j2",
        project.read("templates/story.j2")
        + 'Joined {{ var("nope") }} in\n'
        + '{{ env_var("SEGTOOL_NOPE") }}\n'
        + '{{ env_var("HOME", "x") }}\n'
        + '{{ var("nope", "a default") }} {{ env_var("SEGTOOL_NOPE", "d") }} {{ var("as_of") }}\n',
    )
    err = _invalid(
        project,
        "templates/story.j2:3: template 'story.j2': var('nope') is not defined",
        "templates/story.j2:4: template 'story.j2': environment variable 'SEGTOOL_NOPE' is not set",
        "templates/story.j2:5: template 'story.j2': env_var('HOME'): a project reads only",
        "3 errors",
    )
    assert "story.j2:6" not in err  # with a default, or defined: fine
    # the same as the run finds them: with the variable set, that one is gone
    monkeypatch.setenv("SEGTOOL_NOPE", "1")
    err = _invalid(project, "var('nope') is not defined", "2 errors")
    assert "SEGTOOL_NOPE" not in err


# ----------------------------------------------------------------- D: a LIST as a category


def test_a_list_column_cannot_be_categorical(project):
    """validate and dry run ok, run: `internal error: InvalidOperationError:
    cannot cast List type`."""
    project.edit(
        "segments/segments.yml",
        "      recency_days: {transform: log1p}\n",
        "      recency_days: {transform: log1p}\n      products: {type: categorical}\n",
    )
    line = _line(project, "segments/segments.yml", "- name: rfm")
    for cmd in (("validate",), ("run", "--dry-run")):
        _invalid(
            project,
            f"segments/segments.yml:{line}: features 'rfm': column 'products' is VARCHAR[], "
            "not one value per user",
            "leave the column out",
            cmd=cmd,
        )


# ----------------------------------------------------------------- E: source columns


def test_a_tested_source_column_must_be_in_the_source(project):
    """`segtool test` failed with a binder error; validate passed."""
    project.edit("models/sources.yml", "- name: user_id", "- name: user_idd")
    line = _line(project, "models/sources.yml", "user_idd")
    _invalid(
        project,
        f"models/sources.yml:{line}: source 'shop.users' has no column 'user_idd'",
        "did you mean 'user_id'",
    )


def test_a_relationships_field_must_be_a_column_of_the_source(project):
    """`segtool test` said 'Referenced table "p" not found!'."""
    project.edit(
        "models/sources.yml",
        "path: data/orders.csv\n",
        "path: data/orders.csv\n"
        "        columns:\n"
        "          - name: user_id\n"
        "            tests:\n"
        "              - relationships: {to: \"source('shop','users')\", field: usr_id}\n",
    )
    line = _line(project, "models/sources.yml", "field: usr_id") - 2
    _invalid(
        project,
        f"models/sources.yml:{line}: relationships on 'user_id': source 'shop.users' has no "
        "column 'usr_id'",
        "did you mean 'user_id'",
    )
    project.edit("models/sources.yml", "field: usr_id", "field: user_id")
    assert "no errors" in project.cli("validate").stdout


# ----------------------------------------------------------------- F: the merge's line


def test_an_error_in_the_incremental_branch_is_at_its_line(project):
    """Reported at a line of the full build (the last one before the
    `{% if is_incremental() %}`), not the line of the error."""
    project.write(
        "models/orders_inc.sql",
        """
        {{ config(materialized='incremental', unique_key='order_id') }}
        select order_id, user_id, ordered_at
        from {{ source('shop', 'orders') }}
        {% if is_incremental() %}
        -- the orders since the newest loaded
        where ordered_at > (select max(ordered_att) from {{ this }})
        {% endif %}
        """,
    )
    err = _invalid(
        project,
        "models/orders_inc.sql:6: model 'orders_inc': Binder Error",
        "ordered_att",
        "is_incremental()",
    )
    assert "line 6: where ordered_at" in err


def test_a_pii_column_in_an_included_template_is_refused(project):
    """validate looked for PII in a text's own template only: a PII column
    read in an included one was embedded with no word."""
    project.edit(
        "models/schema.yml",
        "      - name: top_category\n",
        "      - name: top_category\n        pii: true\n",
    )
    _include(project, "Mostly {{ top_category }}.\n")
    _invalid(
        project,
        "templates/parts/o.j2:1",
        "template 'parts/o.j2' (included by text 'story') uses 'top_category', a PII column",
        "allow_pii: [top_category]",
    )


def test_a_model_column_named_key_cannot_be_read_silently(project):
    """In a template `key` is the entity key: a model column named `key` read
    there gave every user's id, with no word from validate."""
    project.edit("models/user_features.sql", "u.country,", "u.country, 'gold' as key,")
    project.write("templates/story.j2", project.read("templates/story.j2") + "Tier {{ key }}.\n")
    _invalid(
        project,
        "templates/story.j2:",
        "template 'story.j2' reads 'key', which in a template is the entity key ('user_id')",
        "rename the column in model 'user_features'",
    )
