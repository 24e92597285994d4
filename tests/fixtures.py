"""A tiny project generated in code: 60 users in 3 planted groups that differ
in what they buy (and so in their texts)."""

from __future__ import annotations

import random
from pathlib import Path

GROUPS = {
    "outdoor": ["tent", "hiking boots", "trail map", "camping stove"],
    "baby": ["diapers", "baby wipes", "stroller", "baby bottle"],
    "gaming": ["gamepad", "headset", "graphics card", "game console"],
}


def data_files(
    n_users: int = 60, seed: int = 1, changed: tuple[int, ...] = (), extra_users: int = 0
) -> dict[str, str]:
    users = ["user_id,signup_at,country"]
    orders = ["order_id,user_id,product,category,amount,ordered_at"]
    oid = 0
    groups = list(GROUPS)
    for u in range(1, n_users + extra_users + 1):
        g = groups[u % 3]
        rng = random.Random(
            seed * 100_003 + u
        )  # per user: changing one user leaves the others alone
        users.append(f"{u},2023-01-{1 + u % 28:02d},{['DE', 'FR', 'US'][u % 3]}")
        n_orders = 2 + u % 3
        for j in range(n_orders + (3 if u in changed else 0)):
            oid += 1
            prod = GROUPS[g][rng.randrange(4)]
            amount = round(10 + rng.random() * 90 + (50 if u % 5 == 0 else 0), 2)
            orders.append(
                f"{oid},{u},{prod},{g},{amount},2024-0{1 + min(j, 5)}-{1 + (u + j) % 27:02d} 10:00:00"
            )
    return {"data/users.csv": "\n".join(users) + "\n", "data/orders.csv": "\n".join(orders) + "\n"}


def tiny_project_files(**kw) -> dict[str, str]:
    files = {
        "segtool_project.yml": """
            name: tiny
            entity: {name: user, key: user_id}
            vars: {as_of: "2024-07-01"}
        """,
        "models/sources.yml": """
            sources:
              - name: shop
                tables:
                  - name: users
                    path: data/users.csv
                    columns:
                      - name: user_id
                        tests: [unique, not_null]
                  - name: orders
                    path: data/orders.csv
        """,
        "models/stg_orders.sql": """
            select order_id, user_id, product, category, amount, ordered_at
            from {{ source('shop', 'orders') }}
        """,
        "models/user_features.sql": """
            {{ config(materialized='table') }}
            select
                u.user_id,
                u.country,
                count(o.order_id) as orders,
                coalesce(sum(o.amount), 0) as revenue,
                coalesce(date_diff('day', max(o.ordered_at), DATE '{{ var("as_of") }}'), 999) as recency_days,
                coalesce(mode(o.category), 'none') as top_category,
                list(o.product order by o.ordered_at desc) filter (where o.product is not null) as products
            from {{ source('shop', 'users') }} u
            left join {{ ref('stg_orders') }} o on o.user_id = u.user_id
            group by all
        """,
        "models/schema.yml": """
            models:
              - name: user_features
                description: One row per user.
                columns:
                  - name: user_id
                    tests: [unique, not_null]
                  - name: top_category
                    tests:
                      - accepted_values: {values: [outdoor, baby, gaming, none]}
              - name: stg_orders
                columns:
                  - name: user_id
                    tests:
                      - not_null
                      - relationships: {to: "ref('user_features')", field: user_id}
        """,
        "templates/story.j2": """
            A shopper from {{ country }} with {{ orders }} orders.
            {% if products %}Recently bought {{ products[:4] | join(', ') }}.{% endif %}
        """,
        "segments/segments.yml": """
            features:
              - name: rfm
                model: user_features
                columns:
                  orders: {transform: log1p}
                  revenue: {transform: log1p}
                  recency_days: {transform: log1p}
            texts:
              - name: story
                model: user_features
                template: story.j2
                max_chars: 300
            encoders:
              - name: hash
                kind: hashing
                dim: 256
            segmentations:
              - name: behaviour
                inputs:
                  - {embedding: {text: story, encoder: hash}, weight: 1.0}
                  - {features: rfm, weight: 0.3}
                cluster: {method: kmeans, k: 3, seed: 7}
                labels: {keywords: 3}
                tests: {min_share: 0.05, max_share: 0.9}
              - name: lifecycle
                model: user_features
                rules:
                  - {segment: big, when: "revenue > 300"}
                  - {segment: lapsed, when: "recency_days > 120"}
                default: active
        """,
    }
    files.update(data_files(**kw))
    return files


# ----------------------------------------------------------------- a tiny local transformer

WORDS = (
    "the a shopper customer buys bought orders ordered shoes sneakers running kitchen "
    "coffee beans garden tools baby clothes returns returned discount code mobile app "
    "website email weekend monday friday often never premium price full basket euros "
    "last days months first new lapsed vip loyal review star fast delivery late support "
    "##s ##ed ##ing ##er ##ly"
).split()


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab += [c for c in "abcdefghijklmnopqrstuvwxyz0123456789,.:;!?-"]
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    # from_pretrained on a folder with only vocab.txt works across transformers 4 and 5
    # (the constructor's argument was renamed vocab_file -> vocab).
    tok = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True, model_max_length=512)
    assert len(tok) > 50
    tok.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(folder)
    return folder


# ----------------------------------------------------------------- the ecommerce example


def generate_example(out: Path, period: int, users: int = 2000, seed: int = 42) -> None:
    """examples/ecommerce/generate.py into OUT (data of one period)."""
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[1] / "examples" / "ecommerce"
    subprocess.run(
        [
            sys.executable,
            str(example / "generate.py"),
            "--users",
            str(users),
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--period",
            str(period),
        ],
        check=True,
        capture_output=True,
    )
