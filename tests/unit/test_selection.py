"""dbt selection syntax over a hand-made graph."""

from __future__ import annotations

import copy

import pytest

from segtool.errors import SelectionError
from segtool.graph.dag import Graph, Node
from segtool.graph.selection import select


def n(uid: str, path: str, *deps: str, tags=(), data=None, description="") -> Node:
    kind, _, name = uid.partition(".")
    return Node(
        unique_id=uid,
        kind=kind,
        name=name,
        path=path,
        depends_on=list(deps),
        tags=list(tags),
        data=data if data is not None else {"x": uid},
        description=description,
    )


def make_nodes() -> list[Node]:
    return [
        n("source.shop.orders", "models/sources.yml", tags=["raw"]),
        n("source.shop.users", "models/sources.yml", tags=["raw"]),
        n("source.crm.contacts", "models/crm.yml", tags=["raw"]),
        n(
            "model.stg_orders",
            "models/staging/stg_orders.sql",
            "source.shop.orders",
            tags=["staging"],
        ),
        n("model.stg_users", "models/staging/stg_users.sql", "source.shop.users", tags=["staging"]),
        n(
            "model.user_features",
            "models/user_features.sql",
            "model.stg_orders",
            "model.stg_users",
            tags=["daily"],
        ),
        n("features.rfm", "segments/seg.yml", "model.user_features", tags=["daily"]),
        n("segmentation.lifecycle", "segments/seg.yml", "model.user_features"),
        n("segmentation.behaviour", "segments/seg.yml", "features.rfm"),
    ]


@pytest.fixture
def g() -> Graph:
    graph = Graph(make_nodes())
    graph.fingerprint()
    return graph


def sel(graph, *select_, exclude=(), state=None) -> set[str]:
    return set(select(graph, list(select_), list(exclude), state))


def test_no_selector_selects_everything_in_order(g):
    assert select(g) == g.order()
    assert len(select(g)) == 9


def test_by_name_and_unique_id(g):
    assert sel(g, "user_features") == {"model.user_features"}
    assert sel(g, "model.user_features") == {"model.user_features"}
    assert sel(g, "shop.orders") == {"source.shop.orders"}


def test_plus_prefix_selects_all_ancestors(g):
    assert sel(g, "+user_features") == {
        "model.user_features",
        "model.stg_orders",
        "model.stg_users",
        "source.shop.orders",
        "source.shop.users",
    }


def test_plus_suffix_selects_all_descendants(g):
    assert sel(g, "user_features+") == {
        "model.user_features",
        "features.rfm",
        "segmentation.lifecycle",
        "segmentation.behaviour",
    }


def test_depth_limited_ancestors(g):
    assert sel(g, "1+user_features") == {
        "model.user_features",
        "model.stg_orders",
        "model.stg_users",
    }
    assert sel(g, "2+user_features") == sel(g, "+user_features")
    assert sel(g, "1+behaviour") == {"segmentation.behaviour", "features.rfm"}


def test_depth_limited_descendants(g):
    assert sel(g, "user_features+1") == {
        "model.user_features",
        "features.rfm",
        "segmentation.lifecycle",
    }
    assert sel(g, "stg_orders+2") == {
        "model.stg_orders",
        "model.user_features",
        "features.rfm",
        "segmentation.lifecycle",
    }


def test_both_directions(g):
    assert sel(g, "1+rfm+1") == {"model.user_features", "features.rfm", "segmentation.behaviour"}
    assert sel(g, "+rfm+") == sel(g, "+user_features") | {"features.rfm", "segmentation.behaviour"}


def test_glob(g):
    assert sel(g, "stg_*") == {"model.stg_orders", "model.stg_users"}
    assert sel(g, "*_features") == {"model.user_features"}
    assert sel(g, "stg_*+1") == {"model.stg_orders", "model.stg_users", "model.user_features"}


def test_tag(g):
    assert sel(g, "tag:staging") == {"model.stg_orders", "model.stg_users"}
    assert sel(g, "tag:daily") == {"model.user_features", "features.rfm"}


def test_path_folder_and_file(g):
    assert sel(g, "path:models/staging") == {"model.stg_orders", "model.stg_users"}
    assert sel(g, "path:models/staging/") == {"model.stg_orders", "model.stg_users"}
    assert sel(g, "path:segments/seg.yml") == {
        "features.rfm",
        "segmentation.lifecycle",
        "segmentation.behaviour",
    }
    assert sel(g, "path:models/staging/stg_users.sql") == {"model.stg_users"}


def test_kind(g):
    assert sel(g, "kind:segmentation") == {"segmentation.lifecycle", "segmentation.behaviour"}
    assert sel(g, "resource_type:features") == {"features.rfm"}


def test_unknown_kind_has_hint(g):
    with pytest.raises(SelectionError) as ei:
        select(g, ["kind:segmentations"])
    assert ei.value.message == "unknown kind 'segmentations'"
    assert ei.value.hint == "did you mean 'segmentation'?"


def test_source(g):
    assert sel(g, "source:shop") == {"source.shop.orders", "source.shop.users"}
    assert sel(g, "source:shop.users") == {"source.shop.users"}
    assert sel(g, "source:shop+") == sel(g, "source:shop") | {
        "model.stg_orders",
        "model.stg_users",
        "model.user_features",
        "features.rfm",
        "segmentation.lifecycle",
        "segmentation.behaviour",
    }


def test_space_is_union(g):
    assert sel(g, "stg_orders lifecycle") == {"model.stg_orders", "segmentation.lifecycle"}
    # several --select values are a union too
    assert sel(g, "stg_orders", "lifecycle") == {"model.stg_orders", "segmentation.lifecycle"}


def test_comma_is_intersection(g):
    assert sel(g, "tag:daily,kind:model") == {"model.user_features"}
    assert sel(g, "+user_features,tag:staging") == {"model.stg_orders", "model.stg_users"}
    assert sel(g, "tag:staging,tag:daily") == set()


def test_exclude(g):
    assert sel(g, "+user_features", exclude=["kind:source"]) == {
        "model.stg_orders",
        "model.stg_users",
        "model.user_features",
    }
    assert sel(g, "user_features+", exclude=["rfm+"]) == {
        "model.user_features",
        "segmentation.lifecycle",
    }
    # exclude alone removes from everything
    assert sel(g, exclude=["kind:source", "kind:model"]) == {
        "features.rfm",
        "segmentation.lifecycle",
        "segmentation.behaviour",
    }


def test_result_is_in_topological_order(g):
    out = select(g, ["user_features+ +user_features"])
    pos = {u: i for i, u in enumerate(g.order())}
    assert out == sorted(out, key=pos.__getitem__)
    assert out[0] in ("source.shop.orders", "source.shop.users")
    assert out[-1] == "segmentation.lifecycle"


def test_unknown_name_errors_with_hint(g):
    with pytest.raises(SelectionError) as ei:
        select(g, ["user_featurs"])
    assert ei.value.message == "selector 'user_featurs' matched no node"
    assert ei.value.hint == "did you mean 'user_features'?"
    assert ei.value.exit_code == 1


def test_unknown_method_errors(g):
    with pytest.raises(SelectionError) as ei:
        select(g, ["tags:daily"])
    assert ei.value.message == "unknown selector method 'tags:'"
    assert "tag:" in ei.value.hint


def test_unparseable_selector(g):
    with pytest.raises(SelectionError, match="cannot parse selector"):
        select(g, ["+"])


# ----------------------------------------------------------------- state


def manifest_of(graph: Graph) -> dict:
    return {"nodes": {u: node.to_manifest() for u, node in graph.nodes.items()}}


def test_state_needs_a_manifest(g):
    with pytest.raises(SelectionError) as ei:
        select(g, ["state:modified"])
    assert "needs --state DIR" in ei.value.message


def test_state_unchanged_selects_nothing(g):
    state = manifest_of(g)
    assert select(g, ["state:modified"], state=state) == []
    assert select(g, ["state:new"], state=state) == []


def test_state_modified_and_new():
    old = Graph(make_nodes())
    old.fingerprint()
    state = copy.deepcopy(manifest_of(old))

    nodes = make_nodes()
    by_id = {x.unique_id: x for x in nodes}
    by_id["model.stg_users"].data = {"x": "changed sql"}  # own definition changed
    by_id["segmentation.lifecycle"].description = "new docs"  # metadata changed
    nodes.append(n("model.brand_new", "models/brand_new.sql", "model.user_features"))
    new = Graph(nodes)
    new.fingerprint()

    assert sel(new, "state:new", state=state) == {"model.brand_new"}
    # modified: own definition or metadata; downstream data_hash changes do not count
    assert sel(new, "state:modified", state=state) == {
        "model.stg_users",
        "segmentation.lifecycle",
        "model.brand_new",
    }
    assert sel(new, "state:modified+", state=state) == {
        "model.stg_users",
        "segmentation.lifecycle",
        "model.brand_new",
        "model.user_features",
        "features.rfm",
        "segmentation.behaviour",
    }
    assert sel(new, "state:modified,kind:model", state=state) == {
        "model.stg_users",
        "model.brand_new",
    }
    assert sel(new, "state:modified", exclude=["state:new"], state=state) == {
        "model.stg_users",
        "segmentation.lifecycle",
    }


def test_state_unknown_value(g):
    with pytest.raises(SelectionError) as ei:
        select(g, ["state:changed"], state=manifest_of(g))
    assert ei.value.message == "unknown state selector 'changed'"
