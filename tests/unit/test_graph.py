"""The node graph: topological order, cycles, ancestors/descendants,
fingerprints; and the graph built from a real (tiny) project."""

from __future__ import annotations

import pytest

from segtool.errors import ProjectError, ProjectErrors
from segtool.graph.build import build_graph, template_dependencies
from segtool.graph.dag import Graph, Node
from segtool.project.loader import load_project
from tests.conftest import write_files
from tests.fixtures import tiny_project_files


def node(uid: str, *deps: str, data=None, **kw) -> Node:
    kind, _, name = uid.partition(".")
    return Node(
        unique_id=uid,
        kind=kind,
        name=name,
        path=kw.pop("path", f"models/{name}.sql"),
        depends_on=list(deps),
        data=data if data is not None else {"sql": name},
        **kw,
    )


def diamond() -> Graph:
    #   a -> b -> d
    #   a -> c -> d,  e alone
    return Graph(
        [
            node("model.d", "model.b", "model.c"),
            node("model.c", "model.a"),
            node("model.b", "model.a"),
            node("model.a"),
            node("model.e"),
        ]
    )


# ----------------------------------------------------------------- order


def test_order_is_topological_and_ties_break_by_id():
    g = diamond()
    assert g.order() == ["model.a", "model.b", "model.c", "model.d", "model.e"]


def test_order_is_stable_regardless_of_insertion_order():
    nodes = [
        node("model.z"),
        node("model.y", "model.z"),
        node("model.x"),
        node("model.w", "model.x", "model.y"),
    ]
    a = Graph(nodes).order()
    b = Graph(list(reversed(nodes))).order()
    assert a == b == ["model.x", "model.z", "model.y", "model.w"]


def test_every_node_comes_after_its_parents():
    g = diamond()
    pos = {u: i for i, u in enumerate(g.order())}
    for n in g.nodes.values():
        for d in n.depends_on:
            assert pos[d] < pos[n.unique_id]


def test_unknown_dependencies_are_ignored():
    g = Graph([node("model.a", "model.gone")])
    assert g.order() == ["model.a"]
    assert g.ancestors("model.a") == set()


def test_by_kind_and_get():
    g = Graph([node("source.s.t"), node("model.m", "source.s.t"), node("features.f", "model.m")])
    assert [n.unique_id for n in g.by_kind("model")] == ["model.m"]
    assert g.get("features", "f").name == "f"
    assert g.get("features", "nope") is None
    assert "model.m" in g and "model.zz" not in g
    assert g.children["source.s.t"] == ["model.m"]


# ----------------------------------------------------------------- cycles


def test_three_node_cycle_is_named_in_order():
    # a refs b, b refs c, c refs a: data flows c -> b -> a -> c
    g = Graph(
        [
            node("model.a", "model.b", path="models/a.sql", line=1),
            node("model.b", "model.c", path="models/b.sql", line=1),
            node("model.c", "model.a", path="models/c.sql", line=1),
            node("model.ok"),
        ]
    )
    with pytest.raises(ProjectError) as ei:
        g.order()
    e = ei.value
    assert e.message == "dependency cycle: model.c -> model.b -> model.a -> model.c"
    assert (e.path, e.line) == ("models/c.sql", 1)
    assert "break the loop" in e.hint


def test_cycle_message_leaves_out_nodes_below_the_cycle():
    g = Graph(
        [
            node("model.a", "model.b"),
            node("model.b", "model.a"),
            node("model.aa_below", "model.a"),  # sorts first, depends on the cycle
        ]
    )
    with pytest.raises(ProjectError) as ei:
        g.order()
    assert ei.value.message == "dependency cycle: model.b -> model.a -> model.b"


def test_self_reference_is_a_cycle():
    g = Graph([node("model.a", "model.a")])
    with pytest.raises(ProjectError) as ei:
        g.order()
    assert ei.value.message == "dependency cycle: model.a -> model.a"


# ----------------------------------------------------------------- ancestors / descendants


def test_ancestors_and_descendants():
    g = diamond()
    assert g.ancestors("model.d") == {"model.a", "model.b", "model.c"}
    assert g.ancestors("model.a") == set()
    assert g.descendants("model.a") == {"model.b", "model.c", "model.d"}
    assert g.descendants("model.d") == set()
    assert g.descendants("model.e") == set() and g.ancestors("model.e") == set()


# ----------------------------------------------------------------- fingerprints (hand-made)


def test_fingerprint_values():
    def build(kind_b="model"):
        g = Graph(
            [node("model.a", data={"sql": "x"}), node(f"{kind_b}.b", "model.a", data={"sql": "x"})]
        )
        g.fingerprint()
        return g

    g, again = build(), build()
    a, b = g["model.a"], g["model.b"]
    # deterministic sha256 hex digests
    assert all(len(h) == 64 for h in (a.own_hash, a.data_hash, a.metadata_hash))
    assert (a.own_hash, a.data_hash, b.data_hash) == (
        again["model.a"].own_hash,
        again["model.a"].data_hash,
        again["model.b"].data_hash,
    )
    # own_hash: kind + data only; same data and kind, same own_hash whatever the parents
    assert a.own_hash == b.own_hash
    assert a.data_hash != b.data_hash  # b folds in a's data hash
    assert build("features")["features.b"].own_hash != b.own_hash
    assert a.metadata_hash == b.metadata_hash  # both have no description, tags or meta


def test_fingerprint_propagation_by_hand():
    def build(a_sql="x", a_desc=""):
        g = Graph(
            [
                node("model.a", data={"sql": a_sql}, description=a_desc),
                node("model.b", "model.a", data={"sql": "y"}),
                node("model.c", "model.b", data={"sql": "z"}),
            ]
        )
        g.fingerprint()
        return {u: (n.own_hash, n.data_hash, n.metadata_hash) for u, n in g.nodes.items()}

    base, sql, desc = build(), build(a_sql="x2"), build(a_desc="docs")
    # SQL change: a's own+data hash; b and c only data hash
    assert sql["model.a"][0] != base["model.a"][0] and sql["model.a"][1] != base["model.a"][1]
    for u in ("model.b", "model.c"):
        assert sql[u][0] == base[u][0]
        assert sql[u][1] != base[u][1]
        assert sql[u][2] == base[u][2]
    # description change: only a's metadata hash
    assert desc["model.a"][:2] == base["model.a"][:2]
    assert desc["model.a"][2] != base["model.a"][2]
    assert desc["model.b"] == base["model.b"] and desc["model.c"] == base["model.c"]


def test_fingerprint_does_not_depend_on_parent_listing_order():
    g1 = Graph(
        [
            node("model.a", data={"sql": "1"}),
            node("model.b", data={"sql": "2"}),
            node("model.c", "model.a", "model.b"),
        ]
    )
    g2 = Graph(
        [
            node("model.a", data={"sql": "1"}),
            node("model.b", data={"sql": "2"}),
            node("model.c", "model.b", "model.a"),
        ]
    )
    g1.fingerprint()
    g2.fingerprint()
    assert g1["model.c"].data_hash == g2["model.c"].data_hash


def test_to_manifest_keys():
    g = diamond()
    g.fingerprint()
    m = g["model.d"].to_manifest()
    assert m["unique_id"] == "model.d" and m["depends_on"] == ["model.b", "model.c"]
    assert {
        "unique_id",
        "kind",
        "name",
        "path",
        "line",
        "tags",
        "description",
        "depends_on",
        "data_hash",
        "own_hash",
        "metadata_hash",
    } <= set(m)
    assert m["data_hash"] == g["model.d"].data_hash


# ----------------------------------------------------------------- built from a project


@pytest.fixture
def tiny(tmp_path):
    return write_files(tmp_path / "proj", tiny_project_files())


def hashes(root):
    g = build_graph(load_project(root)).graph
    return {u: (n.own_hash, n.data_hash, n.metadata_hash) for u, n in g.nodes.items()}


def test_built_graph_nodes_and_edges(tiny):
    built = build_graph(load_project(tiny))
    g = built.graph
    assert g.order() == [
        "encoder.hash",
        "source.shop.orders",
        "model.stg_orders",
        "source.shop.users",
        "model.user_features",
        "features.rfm",
        "segmentation.lifecycle",
        "text.story",
        "embedding.story.hash",
        "segmentation.behaviour",
    ]
    assert g["model.user_features"].depends_on == ["model.stg_orders", "source.shop.users"]
    assert g["embedding.story.hash"].depends_on == ["text.story", "encoder.hash"]
    assert g["segmentation.behaviour"].depends_on == ["embedding.story.hash", "features.rfm"]
    assert g["segmentation.lifecycle"].depends_on == ["model.user_features"]
    assert (
        g["segmentation.lifecycle"].line == 25
        and g["segmentation.lifecycle"].path == "segments/segments.yml"
    )
    assert g["model.user_features"].description == "One row per user."
    assert set(built.compiled) == {"stg_orders", "user_features"}
    assert built.errors == []


def test_editing_a_description_changes_only_metadata_hash(tiny):
    before = hashes(tiny)
    text = (tiny / "models/schema.yml").read_text()
    (tiny / "models/schema.yml").write_text(
        text.replace("One row per user.", "One row per customer.")
    )
    after = hashes(tiny)
    changed = {u for u in before if before[u] != after[u]}
    assert changed == {"model.user_features"}
    b, a = before["model.user_features"], after["model.user_features"]
    assert a[0] == b[0] and a[1] == b[1] and a[2] != b[2]


def test_editing_sql_changes_own_hash_there_and_data_hash_below(tiny):
    before = hashes(tiny)
    p = tiny / "models/stg_orders.sql"
    p.write_text(p.read_text().replace("amount,", "amount * 1 as amount,"))
    after = hashes(tiny)
    own_changed = {u for u in before if before[u][0] != after[u][0]}
    data_changed = {u for u in before if before[u][1] != after[u][1]}
    meta_changed = {u for u in before if before[u][2] != after[u][2]}
    assert own_changed == {"model.stg_orders"}
    assert data_changed == {
        "model.stg_orders",
        "model.user_features",
        "features.rfm",
        "text.story",
        "embedding.story.hash",
        "segmentation.behaviour",
        "segmentation.lifecycle",
    }
    assert meta_changed == set()


def test_editing_a_template_changes_text_and_below_only(tiny):
    before = hashes(tiny)
    write_files(tiny, {"templates/story.j2": "A shopper from {{ country }}.\n"})
    after = hashes(tiny)
    assert {u for u in before if before[u][0] != after[u][0]} == {"text.story"}
    assert {u for u in before if before[u][1] != after[u][1]} == {
        "text.story",
        "embedding.story.hash",
        "segmentation.behaviour",
    }


def test_segmentation_tests_are_metadata(tiny):
    before = hashes(tiny)
    p = tiny / "segments/segments.yml"
    p.write_text(p.read_text().replace("max_share: 0.9", "max_share: 0.8"))
    after = hashes(tiny)
    assert {u for u in before if before[u] != after[u]} == {"segmentation.behaviour"}
    assert after["segmentation.behaviour"][:2] == before["segmentation.behaviour"][:2]


def test_encoder_batch_size_and_device_are_metadata(tiny):
    """Where and how fast vectors are computed changes no vector: batch_size and
    device move only the metadata hash (a diff shows them, nothing reruns)."""
    before = hashes(tiny)
    p = tiny / "segments/segments.yml"
    p.write_text(p.read_text().replace("dim: 256", "dim: 256\n    batch_size: 7\n    device: cpu"))
    after = hashes(tiny)
    for uid in before:
        assert after[uid][:2] == before[uid][:2], uid  # own and data hashes
    assert after["encoder.hash"][2] != before["encoder.hash"][2]


def test_a_model_without_the_new_config_keeps_its_hash(tiny):
    """delete_not_in enters a model's data only when set: databases built
    before it existed see the same own_hash and rebuild nothing."""
    g = build_graph(load_project(tiny)).graph
    data = g["model.user_features"].data
    assert "delete_not_in" not in data
    assert set(data) == {"sql", "materialized", "unique_key"}


def test_cycle_through_ref_is_reported(tiny):
    write_files(
        tiny,
        {
            "models/a.sql": "select * from {{ ref('b') }}",
            "models/b.sql": "select * from {{ ref('c') }}",
            "models/c.sql": "select * from {{ ref('a') }}",
        },
    )
    with pytest.raises(ProjectErrors) as ei:
        build_graph(load_project(tiny))
    (e,) = ei.value.errors
    assert e.message == "dependency cycle: model.c -> model.b -> model.a -> model.c"
    assert e.path == "models/c.sql"


def test_unknown_model_reference_with_hint(tiny):
    p = tiny / "segments/segments.yml"
    p.write_text(
        p.read_text().replace(
            "model: user_features\n    template", "model: user_featurs\n    template"
        )
    )
    built = build_graph(load_project(tiny), strict=False)
    (e,) = built.errors
    assert e.message == "text 'story': unknown model 'user_featurs'"
    assert e.hint == "did you mean 'user_features'?"
    assert e.path == "segments/segments.yml" and e.line == 9  # the text item


def test_template_dependencies_follow_includes(tiny):
    write_files(
        tiny,
        {
            "templates/story.j2": "{% include 'part.j2' %}{% import 'macros.j2' as m %}",
            "templates/part.j2": "{% include 'leaf.j2' %}",
            "templates/leaf.j2": "leaf",
            "templates/macros.j2": "{% macro x() %}{% endmacro %}",
        },
    )
    deps = template_dependencies(load_project(tiny), "story.j2")
    assert sorted(deps) == ["leaf.j2", "macros.j2", "part.j2", "story.j2"]
    assert deps[0] == "story.j2"
