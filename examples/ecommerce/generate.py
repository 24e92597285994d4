#!/usr/bin/env python3
"""Synthetic e-commerce data for the segtool example projects.

Writes four source tables (users, products, orders, events) plus the planted
truth (_truth.csv, not a source) into --out. Everything is vectorised numpy,
so 1,000,000 users / ~10,000,000 events take well under two minutes.

    python examples/ecommerce/generate.py --users 100000 --out examples/ecommerce/data
    python examples/ecommerce/generate.py --users 100000 --out examples/ecommerce/data --period 2

Periods. Period 1 holds activity up to (not including) 2024-06-24. Period N
is period N-1 plus one more week (a full snapshot, same file names, so it
replaces the previous files in the same folder): ~5% new users who sign up
that week, ~1% of existing users with new orders and events, and ~0.2% of
users deleted with all their rows. Period 2 ends on 2024-07-01 00:00, so with
the project's `as_of: 2024-06-30` nothing in periods 1-2 is in the future;
for period 3+ raise `as_of` (`--vars`). Output is deterministic given
(--users, --seed, --period).

Planted groups (see README.md). outdoor_enthusiasts, gamers and home_cooks
share exactly the same order/event/price laws (same counts, recency, product
price vectors, number of categories) and differ only in WHICH categories and
products they touch: RFM features cannot tell them apart, text can.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# ----------------------------------------------------------------------------
# Calendar
# ----------------------------------------------------------------------------
DAY = np.int64(86_400)
START = np.datetime64("2022-01-01T00:00:00", "s").astype(np.int64)
P1_END = np.datetime64("2024-06-24T00:00:00", "s").astype(np.int64)
PERIOD_DAYS = 7


def period_end(p: int) -> np.int64:
    """Exclusive upper bound of the activity in period p (seconds since epoch)."""
    return np.int64(P1_END + (p - 1) * PERIOD_DAYS * DAY)


# ----------------------------------------------------------------------------
# Catalogue: 11 categories x 20 items x 3 brands = 660 products.
# Items are listed roughly from cheap to expensive; prices are assigned in that
# order so a tent costs more than a pair of socks.
# ----------------------------------------------------------------------------
CATALOGUE: dict[str, tuple[list[str], list[str]]] = {
    "Outdoor & Camping": (
        ["Ridgeline", "Northpeak", "Alpenglow"],
        [
            "Merino Hiking Socks",
            "Enamel Camp Mug",
            "Waterproof Map Case",
            "Water Filter Straw",
            "LED Headlamp",
            "Insulated Water Bottle",
            "Camping Hammock",
            "Trekking Poles",
            "Backpacking Stove",
            "Quick-Dry Hiking Shorts",
            "Hydration Daypack",
            "Self-Inflating Sleeping Pad",
            "Fleece Mid-Layer Jacket",
            "Trail Running Shoes",
            "Rain Shell Jacket",
            "Waterproof Hiking Boots",
            "Down Sleeping Bag",
            "65L Backpacking Pack",
            "Ultralight 2-Person Tent",
            "Four-Season Mountaineering Tent",
        ],
    ),
    "Sports & Fitness": (
        ["Stridewell", "Corefit", "Pacebound"],
        [
            "Sweatband Set",
            "Speed Jump Rope",
            "Resistance Bands Set",
            "Yoga Block",
            "Climbing Chalk Bag",
            "Foam Roller",
            "Running Belt",
            "Cycling Gloves",
            "Yoga Mat",
            "Compression Running Tights",
            "Kettlebell 12kg",
            "Cycling Jersey",
            "Climbing Harness",
            "Road Cycling Helmet",
            "Rock Climbing Shoes",
            "Adjustable Dumbbells",
            "GPS Running Watch",
            "Indoor Cycling Trainer",
            "Carbon Trail Bike Wheelset",
            "Full-Suspension Mountain Bike Frame",
        ],
    ),
    "Video Games": (
        ["Pixelforge", "Nightowl Games", "Arcadia Studios"],
        [
            "Retro Arcade Collection",
            "Indie Puzzle Adventure",
            "Pixel Art Platformer",
            "Card Battler Deckbuilder",
            "Kart Racing Championship",
            "Football Manager Season",
            "Tactical Stealth Shooter",
            "Zombie Survival Shooter",
            "Battle Royale Season Pass",
            "Space Strategy Saga",
            "Fighting Game Tournament Edition",
            "Open-World Fantasy RPG",
            "Sci-Fi Action RPG",
            "Racing Simulator Deluxe",
            "MMO Expansion Pack",
            "Horror Remake Deluxe Edition",
            "VR Rhythm Game Bundle",
            "Complete Trilogy Remaster",
            "Fantasy RPG Collector's Edition",
            "Ultimate Game Library Bundle",
        ],
    ),
    "Gaming Gear": (
        ["Hexacore", "Razorline", "Voltbyte"],
        [
            "Thumbstick Grips",
            "Gaming Mouse Pad XL",
            "Controller Charging Dock",
            "RGB Gaming Mouse",
            "USB Headset Stand",
            "Wireless Controller",
            "Mechanical Gaming Keyboard",
            "Surround Gaming Headset",
            "Streaming Microphone",
            "Streaming Webcam",
            "Console Cooling Stand",
            "External Capture Card",
            "1TB Console SSD",
            "Racing Wheel and Pedals",
            "Flight Stick Controller",
            "Ergonomic Gaming Chair",
            "VR Headset Strap Kit",
            "27-inch 165Hz Gaming Monitor",
            "Handheld Gaming PC",
            "Ultrawide 240Hz Gaming Monitor",
        ],
    ),
    "Kitchen & Cookware": (
        ["Copperleaf", "Hearth & Oak", "Ferro Cucina"],
        [
            "Silicone Spatula Set",
            "Bench Scraper",
            "Microplane Zester",
            "Digital Kitchen Scale",
            "Sourdough Proofing Basket",
            "Instant-Read Thermometer",
            "Bamboo Cutting Board",
            "Mortar and Pestle",
            "Pasta Drying Rack",
            "Carbon Steel Wok",
            "Cast Iron Skillet",
            "Chef's Knife 8-inch",
            "Pasta Maker Machine",
            "Stainless Saute Pan",
            "Sous Vide Immersion Circulator",
            "Enameled Dutch Oven",
            "Japanese Santoku Knife",
            "Copper Cookware Set",
            "Espresso Machine",
            "Professional Stand Mixer",
        ],
    ),
    "Gourmet Pantry": (
        ["Olivetta", "Spice Route", "Terroir Table"],
        [
            "Smoked Sea Salt",
            "Dried Porcini Mushrooms",
            "Szechuan Peppercorns",
            "Aged Balsamic Vinegar",
            "Harissa Paste",
            "Single-Origin Coffee Beans",
            "San Marzano Tomatoes Case",
            "Extra Virgin Olive Oil",
            "Artisan Pasta Sampler",
            "Sourdough Starter Kit",
            "Black Truffle Oil",
            "Spanish Saffron Threads",
            "Spice Rack Refill Set",
            "Matcha Ceremonial Grade",
            "Japanese Miso Trio",
            "Italian Cheese Board Box",
            "Specialty Chocolate Collection",
            "Iberico Ham Slices",
            "Wagyu Steak Gift Box",
            "Gourmet Pantry Hamper",
        ],
    ),
    "Baby & Kids": (
        ["Little Sprout", "Tiny Steps", "Cuddle Co"],
        [
            "Organic Baby Wipes",
            "Pacifiers 2-Pack",
            "Baby Shampoo",
            "Diaper Rash Cream",
            "Bath Thermometer",
            "Toddler Sippy Cups",
            "Teething Toys",
            "Newborn Diapers",
            "Baby Bottles 3-Pack",
            "Swaddle Blankets",
            "Board Books Set",
            "Nursing Pillow",
            "Baby Play Mat",
            "Bottle Sterilizer",
            "Baby Carrier",
            "Video Baby Monitor",
            "Convertible High Chair",
            "Crib Mattress",
            "Convertible Car Seat",
            "Travel Stroller",
        ],
    ),
    "Luxury Fashion": (
        ["Maison Verre", "Castellane", "Aurelio Bianchi"],
        [
            "Leather Card Holder",
            "Silk Tie",
            "Silk Pocket Square",
            "Calfskin Wallet",
            "Leather Belt",
            "Silk Scarf",
            "Designer Sunglasses",
            "Merino Turtleneck",
            "Silk Blouse",
            "Gold Hoop Earrings",
            "Cashmere Sweater",
            "Evening Clutch",
            "Italian Leather Loafers",
            "Suede Ankle Boots",
            "Tailored Blazer",
            "Pearl Necklace",
            "Crossbody Handbag",
            "Wool Overcoat",
            "Leather Tote Bag",
            "Swiss Automatic Watch",
        ],
    ),
    "Beauty & Fragrance": (
        ["Lumiere", "Bloom & Co", "Velvet Rose"],
        [
            "Nail Polish Set",
            "Lip Balm Trio",
            "Sheet Mask Set",
            "Facial Cleanser",
            "Mascara",
            "Matte Lipstick",
            "Hair Oil",
            "Hyaluronic Moisturizer",
            "Vitamin C Serum",
            "Retinol Night Cream",
            "Eyeshadow Palette",
            "Body Lotion Gift Set",
            "Silk Pillowcase",
            "Hair Dryer Diffuser",
            "Eau de Toilette 50ml",
            "Eau de Parfum 50ml",
            "Anti-Aging Skincare Set",
            "Eau de Parfum 100ml",
            "Ionic Hair Dryer",
            "Luxury Fragrance Collection",
        ],
    ),
    "Household Essentials": (
        ["HomeBasics", "CleanCo", "EveryDay"],
        [
            "Sponges 6-Pack",
            "Dish Soap",
            "Aluminum Foil",
            "Zip Storage Bags",
            "Glass Cleaner",
            "Hand Soap Refill",
            "All-Purpose Cleaner",
            "Microfiber Cloths",
            "Trash Bags 90ct",
            "Air Freshener",
            "Fabric Softener",
            "Mop Refill Pads",
            "LED Light Bulbs 4-Pack",
            "Paper Towels 12-Pack",
            "Laundry Detergent Pods",
            "Dishwasher Tablets",
            "AA Batteries 24-Pack",
            "Toilet Paper 24-Pack",
            "Laundry Basket",
            "Food Storage Containers Set",
        ],
    ),
    "Books & Media": (
        ["Penrose Press", "Harbor Books", "Quill & Ink"],
        [
            "Poetry Collection",
            "Crossword Puzzle Book",
            "Coloring Book",
            "Wall Calendar",
            "Notebook Set",
            "Bestselling Mystery Novel",
            "Historical Fiction Paperback",
            "Travel Guide",
            "Graphic Novel",
            "Self-Help Hardcover",
            "Biography Hardcover",
            "Card Game",
            "Documentary Blu-ray",
            "Jigsaw Puzzle 1000pc",
            "Vinyl Record",
            "Sci-Fi Trilogy Box Set",
            "Board Game",
            "Language Course",
            "Classic Novels Box Set",
            "Encyclopedia Set",
        ],
    ),
}
CATEGORIES = list(CATALOGUE)
CAT = {c: i for i, c in enumerate(CATEGORIES)}
N_PER_CAT = 60  # 20 items x 3 brands

# Categories whose prices are drawn from ONE shared vector (the twins' world).
TWIN_PRICED = [
    "Outdoor & Camping",
    "Sports & Fitness",
    "Video Games",
    "Gaming Gear",
    "Kitchen & Cookware",
    "Gourmet Pantry",
]
# (median price, lognormal sigma) for the other categories.
PRICE_LAW = {
    "twin": (38.0, 0.85),
    "Baby & Kids": (24.0, 0.8),
    "Luxury Fashion": (380.0, 0.6),
    "Beauty & Fragrance": (42.0, 0.7),
    "Household Essentials": (11.0, 0.5),
    "Books & Media": (18.0, 0.55),
}
# Occasional purchases everyone makes (same pool for every group).
OTHER_POOL = np.array(
    [CAT["Household Essentials"], CAT["Books & Media"], CAT["Beauty & Fragrance"]]
)

# ----------------------------------------------------------------------------
# Planted groups
# ----------------------------------------------------------------------------
GROUPS = [
    "outdoor_enthusiasts",
    "gamers",
    "home_cooks",
    "new_parents",
    "luxury_fashion",
    "bargain_hunters",
]
GROUP_WEIGHTS = np.array([0.18, 0.18, 0.18, 0.16, 0.12, 0.18])
# primary / secondary category per group (-1: bargain hunters pick any category)
PRIMARY = np.array(
    [
        CAT["Outdoor & Camping"],
        CAT["Video Games"],
        CAT["Kitchen & Cookware"],
        CAT["Baby & Kids"],
        CAT["Luxury Fashion"],
        -1,
    ]
)
SECONDARY = np.array(
    [
        CAT["Sports & Fitness"],
        CAT["Gaming Gear"],
        CAT["Gourmet Pantry"],
        CAT["Household Essentials"],
        CAT["Beauty & Fragrance"],
        -1,
    ]
)
# share of orders in primary, secondary (rest from OTHER_POOL)
ORDER_MIX = np.array([[0.60, 0.25]] * 3 + [[0.65, 0.25], [0.70, 0.20], [0.0, 0.0]])
# events browse more widely: rest from ANY category
EVENT_MIX = np.array([[0.50, 0.25]] * 3 + [[0.55, 0.25], [0.60, 0.25], [0.0, 0.0]])
ORDERS_PER_YEAR = np.array([3.5, 3.5, 3.5, 5.5, 2.4, 6.5])
EVENTS_PER_YEAR = np.array([10.0, 10.0, 10.0, 9.0, 14.0, 12.0])
DISPERSION = 3.0  # negative binomial shape: many light, few heavy users
EVENT_TYPES = ["view", "cart", "wishlist", "search"]
EVENT_TYPE_P = np.array(
    [
        [0.72, 0.12, 0.08, 0.08],
        [0.72, 0.12, 0.08, 0.08],
        [0.72, 0.12, 0.08, 0.08],
        [0.70, 0.16, 0.06, 0.08],
        [0.66, 0.08, 0.20, 0.06],
        [0.55, 0.15, 0.05, 0.25],
    ]
)

COUNTRIES = ["US", "GB", "DE", "FR", "CA", "AU", "NL", "ES", "SE", "IT"]
COUNTRY_P = np.array([0.34, 0.13, 0.11, 0.09, 0.08, 0.06, 0.05, 0.05, 0.04, 0.05])
CHANNELS = ["organic", "paid_search", "social", "referral", "email"]
CHANNEL_P = np.array([0.35, 0.25, 0.2, 0.1, 0.1])


def build_products(seed: int) -> dict[str, np.ndarray]:
    """Product table; ids 1..660, sorted by price inside each category."""
    rng = np.random.default_rng([seed, 0xCA7])
    med, sig = PRICE_LAW["twin"]
    twin_prices = np.sort(np.exp(rng.normal(np.log(med), sig, N_PER_CAT)))
    names, cats, prices = [], [], []
    for c in CATEGORIES:
        brands, items = CATALOGUE[c]
        assert len(items) == 20 and len(brands) == 3, c
        if c in TWIN_PRICED:
            p = twin_prices
        else:
            med, sig = PRICE_LAW[c]
            p = np.sort(np.exp(rng.normal(np.log(med), sig, N_PER_CAT)))
        # retail-style prices: 12.99, 149.99 ...
        p = np.maximum(np.round(p) - 0.01, 1.99)
        k = 0
        for item in items:  # cheap -> expensive
            for b in brands:
                names.append(f"{b} {item}")
                cats.append(c)
                prices.append(p[k])
                k += 1
    return {
        "product_id": np.arange(1, len(names) + 1, dtype=np.int64),
        "name": np.array(names, dtype=object),
        "category": np.array(cats, dtype=object),
        "price": np.array(prices, dtype=np.float64),
    }


PRODUCT_PRICE: np.ndarray  # set in main (index = product_id - 1)


def _pick_products(rng, g: np.ndarray, mix: np.ndarray, other_any: bool) -> np.ndarray:
    """Draw one product id per row for users of group g (vectorised)."""
    n = len(g)
    u = rng.random(n)
    cum1 = mix[g, 0]
    cum2 = cum1 + mix[g, 1]
    if other_any:
        other = rng.integers(0, len(CATEGORIES), n)
    else:
        other = OTHER_POOL[rng.integers(0, len(OTHER_POOL), n)]
    cat = np.where(u < cum1, PRIMARY[g], np.where(u < cum2, SECONDARY[g], other))
    bargain = g == GROUPS.index("bargain_hunters")
    cat = np.where(bargain, rng.integers(0, len(CATEGORIES), n), cat)
    # bargain hunters buy from the cheapest third of a category
    span = np.where(bargain, N_PER_CAT // 3, N_PER_CAT)
    within = np.floor(rng.random(n) * span).astype(np.int64)
    return cat.astype(np.int64) * N_PER_CAT + within + 1


def make_orders(rng, uid, g, lo, hi, counts) -> dict[str, np.ndarray]:
    """counts[i] orders for user uid[i] (group g[i]) uniformly in [lo[i], hi[i])."""
    r_uid = np.repeat(uid, counts)
    r_g = np.repeat(g, counts)
    r_lo = np.repeat(lo, counts)
    r_span = np.repeat(np.maximum(hi - lo, 1), counts)
    t = r_lo + np.floor(rng.random(len(r_uid)) * r_span).astype(np.int64)
    pid = _pick_products(rng, r_g, ORDER_MIX, other_any=False)
    bargain = r_g == GROUPS.index("bargain_hunters")
    u = rng.random(len(r_uid))
    qty = 1 + (u < 0.15) + (u < 0.04)
    qty = np.where(bargain, 1 + rng.poisson(0.8, len(r_uid)), qty)
    disc = np.where(rng.random(len(r_uid)) < 0.1, 0.10, 0.0)
    disc = np.where(bargain, rng.uniform(0.10, 0.35, len(r_uid)), disc)
    amount = np.round(PRODUCT_PRICE[pid - 1] * qty * (1.0 - disc), 2)
    return {
        "user_id": r_uid,
        "product_id": pid,
        "ordered_at": t,
        "quantity": qty.astype(np.int64),
        "amount": amount,
    }


def make_events(rng, uid, g, lo, hi, counts) -> dict[str, np.ndarray]:
    r_uid = np.repeat(uid, counts)
    r_g = np.repeat(g, counts)
    r_lo = np.repeat(lo, counts)
    r_span = np.repeat(np.maximum(hi - lo, 1), counts)
    n = len(r_uid)
    t = r_lo + np.floor(rng.random(n) * r_span).astype(np.int64)
    pid = _pick_products(rng, r_g, EVENT_MIX, other_any=True)
    cum = np.cumsum(EVENT_TYPE_P, axis=1)[r_g]
    etype = (rng.random(n)[:, None] > cum[:, :-1]).sum(axis=1).astype(np.int8)
    return {"user_id": r_uid, "product_id": pid, "event_type": etype, "event_at": t}


def _concat(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def _sort_and_number(rows: dict, tcol: str, idcol: str, start_id: int) -> dict:
    order = np.lexsort((rows["user_id"], rows[tcol]))
    out = {k: v[order] for k, v in rows.items()}
    out[idcol] = np.arange(start_id, start_id + len(order), dtype=np.int64)
    return out


def _negbin(rng, mean: np.ndarray) -> np.ndarray:
    mean = np.maximum(mean, 1e-6)
    return rng.negative_binomial(DISPERSION, DISPERSION / (DISPERSION + mean)).astype(np.int64)


def base_period(n: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, 1])
    end = period_end(1)
    uid = np.arange(1, n + 1, dtype=np.int64)
    g = rng.choice(len(GROUPS), n, p=GROUP_WEIGHTS).astype(np.int64)
    # the shop grows: more recent signups
    span = end - 14 * DAY - START
    signup = START + np.floor(rng.random(n) ** 0.7 * span).astype(np.int64)
    churned = rng.random(n) < 0.3
    active_to = np.where(
        churned, signup + np.floor((end - signup) * rng.random(n)).astype(np.int64), end
    )
    years = np.clip((active_to - signup) / (365.0 * DAY), 0.05, None)
    tenure = np.clip(years, 0.3, 2.5) ** 0.7
    n_orders = _negbin(rng, ORDERS_PER_YEAR[g] * tenure)
    n_events = _negbin(rng, EVENTS_PER_YEAR[g] * tenure)
    orders = make_orders(rng, uid, g, signup, active_to, n_orders)
    events = make_events(rng, uid, g, signup, active_to, n_events)
    users = {
        "user_id": uid,
        "signup_at": signup,
        "country": rng.choice(len(COUNTRIES), n, p=COUNTRY_P).astype(np.int8),
        "channel": rng.choice(len(CHANNELS), n, p=CHANNEL_P).astype(np.int8),
        "group": g,
    }
    return {
        "users": users,
        "orders": _sort_and_number(orders, "ordered_at", "order_id", 1),
        "events": _sort_and_number(events, "event_at", "event_id", 1),
    }


def next_period(state: dict, p: int, seed: int) -> dict:
    """Period p from period p-1: new users, changed users, deleted users."""
    rng = np.random.default_rng([seed, p])
    lo_t, hi_t = period_end(p - 1), period_end(p)
    users, orders, events = state["users"], state["orders"], state["events"]
    n = len(users["user_id"])

    # ~0.2% deleted (GDPR erasure): gone from every table
    deleted = rng.random(n) < 0.002
    keep = ~deleted
    gone = users["user_id"][deleted]
    users = {k: v[keep] for k, v in users.items()}
    orders = {k: v[~np.isin(orders["user_id"], gone)] for k, v in orders.items()}
    events = {k: v[~np.isin(events["user_id"], gone)] for k, v in events.items()}

    # ~1% of existing users come back with new activity this week
    m = len(users["user_id"])
    ch = np.flatnonzero(rng.random(m) < 0.01)
    c_uid, c_g = users["user_id"][ch], users["group"][ch]
    c_lo = np.full(len(ch), lo_t)
    c_hi = np.full(len(ch), hi_t)
    new_o = make_orders(rng, c_uid, c_g, c_lo, c_hi, 1 + rng.poisson(0.5, len(ch)))
    new_e = make_events(rng, c_uid, c_g, c_lo, c_hi, 2 + rng.poisson(3.0, len(ch)))

    # ~5% new users sign up this week
    k = int(round(0.05 * m))
    start_id = int(users["user_id"].max()) + 1 if m else 1
    n_uid = np.arange(start_id, start_id + k, dtype=np.int64)
    n_g = rng.choice(len(GROUPS), k, p=GROUP_WEIGHTS).astype(np.int64)
    n_signup = lo_t + np.floor(rng.random(k) * (hi_t - lo_t - 3600)).astype(np.int64)
    n_hi = np.full(k, hi_t)
    n_orders = np.where(rng.random(k) < 0.6, 1 + rng.poisson(0.6, k), 0)
    new_o = _concat(new_o, make_orders(rng, n_uid, n_g, n_signup, n_hi, n_orders))
    new_e = _concat(new_e, make_events(rng, n_uid, n_g, n_signup, n_hi, 1 + rng.poisson(4.0, k)))
    new_users = {
        "user_id": n_uid,
        "signup_at": n_signup,
        "country": rng.choice(len(COUNTRIES), k, p=COUNTRY_P).astype(np.int8),
        "channel": rng.choice(len(CHANNELS), k, p=CHANNEL_P).astype(np.int8),
        "group": n_g,
    }
    next_order_id = (
        int(state["orders"]["order_id"].max()) + 1 if len(state["orders"]["order_id"]) else 1
    )
    next_event_id = (
        int(state["events"]["event_id"].max()) + 1 if len(state["events"]["event_id"]) else 1
    )
    new_o = _sort_and_number(new_o, "ordered_at", "order_id", next_order_id)
    new_e = _sort_and_number(new_e, "event_at", "event_id", next_event_id)
    return {
        "users": _concat(users, new_users),
        "orders": _concat(orders, new_o),
        "events": _concat(events, new_e),
        "stats": {"deleted": int(deleted.sum()), "changed": len(ch), "new": k},
    }


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------
def _ts(a: np.ndarray) -> pa.Array:
    return pa.array(a.astype("datetime64[s]"), type=pa.timestamp("s"))


def _dict(codes: np.ndarray, values: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values))


def to_tables(state: dict, products: dict) -> dict[str, pa.Table]:
    u, o, e = state["users"], state["orders"], state["events"]
    pid = e["product_id"]
    search = e["event_type"] == EVENT_TYPES.index("search")
    return {
        "users": pa.table(
            {
                "user_id": u["user_id"],
                "signup_at": _ts(u["signup_at"]),
                "country": _dict(u["country"], COUNTRIES),
                "channel": _dict(u["channel"], CHANNELS),
            }
        ),
        "products": pa.table(
            {
                "product_id": products["product_id"],
                "name": pa.array(products["name"].tolist(), pa.string()),
                "category": pa.array(products["category"].tolist(), pa.string()),
                "price": products["price"],
            }
        ),
        "orders": pa.table(
            {
                "order_id": o["order_id"],
                "user_id": o["user_id"],
                "product_id": o["product_id"],
                "ordered_at": _ts(o["ordered_at"]),
                "quantity": o["quantity"],
                "amount": o["amount"],
            }
        ),
        "events": pa.table(
            {
                "event_id": e["event_id"],
                "user_id": e["user_id"],
                # a search has no product
                "product_id": pa.array(pid, mask=search, type=pa.int64()),
                "event_type": _dict(e["event_type"], EVENT_TYPES),
                "event_at": _ts(e["event_at"]),
            }
        ),
        "_truth": pa.table(
            {
                "user_id": u["user_id"],
                "planted_group": _dict(u["group"], GROUPS),
            }
        ),
    }


def _write(table: pa.Table, path: Path, fmt: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "parquet":
        pq.write_table(table, tmp, compression="zstd")
    else:
        import polars as pl

        df = pl.from_arrow(table)
        df = df.with_columns(pl.col(pl.Categorical).cast(pl.String))
        df.write_csv(tmp, datetime_format="%Y-%m-%d %H:%M:%S", float_precision=2)
    os.replace(tmp, path)  # atomic: a reader never sees a half-written file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000, help="users in period 1 (default 1000)")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "data", help="output folder"
    )
    ap.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    ap.add_argument(
        "--period", type=int, default=1, help="1 = initial snapshot; N = N-1 plus one week"
    )
    ap.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    args = ap.parse_args(argv)
    if args.users < 1 or args.period < 1:
        ap.error("--users and --period must be >= 1")

    global PRODUCT_PRICE
    t0 = time.perf_counter()
    products = build_products(args.seed)
    PRODUCT_PRICE = products["price"]
    state = base_period(args.users, args.seed)
    for p in range(2, args.period + 1):
        state = next_period(state, p, args.seed)
    t1 = time.perf_counter()

    args.out.mkdir(parents=True, exist_ok=True)
    tables = to_tables(state, products)
    ext = args.format
    for name, tab in tables.items():
        if name == "_truth":
            _write(tab, args.out / "_truth.csv", "csv")  # truth is always CSV
        else:
            _write(tab, args.out / f"{name}.{ext}", args.format)
    t2 = time.perf_counter()

    s = state.get("stats")
    delta = (
        f" (period {args.period}: +{s['new']} new, {s['changed']} changed, -{s['deleted']} deleted)"
        if s
        else ""
    )
    print(
        f"wrote {args.out}: {tables['users'].num_rows:,} users{delta}, "
        f"{tables['products'].num_rows} products, {tables['orders'].num_rows:,} orders, "
        f"{tables['events'].num_rows:,} events as {ext}; "
        f"generate {t1 - t0:.1f}s, write {t2 - t1:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
