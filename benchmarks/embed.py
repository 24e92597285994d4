"""Embedding throughput: segtool's encoders against SentenceTransformer.encode.

Also: how much of the source model's meaning the fast encoders keep. The static encoder
(model2vec, distilled from --model; dims 256 by default) and the hashing encoder live in
other vector spaces than the transformer, so they are compared by structure, on the same
texts: the correlation of all pairwise cosine similarities, the overlap of each text's 10
nearest neighbours, and the agreement (ARI) of k-means (k=8) fitted in each space.

    python benchmarks/embed.py                      # 5,000 texts, all-MiniLM-L6-v2, batch 64
    python benchmarks/embed.py --n 1000 --rounds 2  # quicker
    python benchmarks/embed.py --model ./models/my-bert --batch-size 32

Texts are synthetic e-commerce shopper stories of 20-120 tokens (fixed seed). Every
backend encodes the same texts; they take turns chunk by chunk (rotating who goes first),
so a noisy neighbour on a shared machine slows all of them alike. With --rounds > 1 each
chunk's best time is kept. Model loading and ONNX export are timed separately ("setup").
On a CUDA machine the GPU rows (fp16, bf16, and encode on cuda as their baseline) are added;
each is timed on its own, encoding the texts again and again for --gpu-seconds, while
nvidia-smi samples the GPU's utilisation (its first second left out). `--device cuda`
gives the GPU rows only:

    python benchmarks/embed.py --device cuda --n 20000 --gpu-seconds 10

Not a test: it takes minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segtool.encoders import build_encoder, resolve_model_path  # noqa: E402
from segtool.project.specs import EncoderSpec  # noqa: E402

CATEGORIES = [
    "running shoes", "kitchen gadgets", "organic snacks", "board games", "skin care",
    "phone accessories", "garden tools", "baby clothes", "vinyl records", "camping gear",
    "office chairs", "pet food", "yoga mats", "coffee beans", "LEGO sets", "winter jackets",
]  # fmt: skip
CITIES = ["Lyon", "Berlin", "Austin", "Osaka", "São Paulo", "Kraków", "Nairobi", "Leeds", "Pune"]
CHANNELS = ["the mobile app", "the website", "email campaigns", "a price-comparison site", "ads"]
SENTENCES = [
    "Shopper from {city} who first ordered {m} months ago.",
    "Placed {n} orders in the last {d} days, mostly {c1} and {c2}.",
    "Usually arrives through {ch} and buys on {day}s.",
    "Average basket is {b} euros; the largest order was {B} euros for {c1}.",
    "Used a discount code on {p}% of orders and abandoned {a} carts this quarter.",
    "Returned {r} items, citing wrong size for {c2}.",
    "Browses {c3} often but has never bought from that category.",
    "Left a {s}-star review mentioning fast delivery and good packaging.",
    "Subscribed to the newsletter and opens about {p}% of the emails.",
    "Recently switched from {c2} to premium {c1}, paying full price.",
    "Contacted support {r} times about late deliveries to {city}.",
    "Has a wishlist with {n} items, including {c3} and {c1}.",
]


def shopper_stories(
    n: int, seed: int = 7, min_tokens: int = 20, max_tokens: int = 120
) -> list[str]:
    """Deterministic stories whose BERT token counts spread over ~min_tokens..max_tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        # ~1.2 BERT word pieces per word here, plus [CLS] and [SEP]
        words_wanted = max(3, round((rng.randint(min_tokens, max_tokens) - 2) / 1.22))
        words: list[str] = []
        while len(words) < words_wanted:
            words += rng.choice(SENTENCES).format(
                city=rng.choice(CITIES), m=rng.randint(1, 60), n=rng.randint(1, 40),
                d=rng.choice([30, 60, 90, 180]), c1=rng.choice(CATEGORIES),
                c2=rng.choice(CATEGORIES), c3=rng.choice(CATEGORIES), ch=rng.choice(CHANNELS),
                day=rng.choice(["Monday", "Friday", "Saturday", "Sunday"]),
                b=rng.randint(12, 300), B=rng.randint(300, 2500), p=rng.randint(0, 100),
                a=rng.randint(0, 9), r=rng.randint(0, 6), s=rng.randint(1, 5),
            ).split()  # fmt: skip
        out.append(" ".join(words[:words_wanted]))
    return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def int8_downstream(fp32: np.ndarray, int8: np.ndarray) -> dict:
    """Does int8 change what segmentation sees? Neighbour overlap and k-means agreement."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    n = min(len(fp32), 3000)
    a, b = fp32[:n], int8[:n]
    overlap = knn10_overlap(a @ a.T, b @ b.T)
    km = KMeans(n_clusters=8, n_init=4, random_state=0).fit(a)
    ari = adjusted_rand_score(km.labels_, km.predict(b))
    return {"knn10_overlap": float(overlap), "kmeans8_ari": float(ari)}


def knn10_overlap(sa: np.ndarray, sb: np.ndarray) -> float:
    """Mean share of each row's 10 nearest neighbours that two similarity
    matrices (of the same texts) agree on."""
    sa, sb = sa.copy(), sb.copy()
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    ka, kb = np.argsort(-sa, axis=1)[:, :10], np.argsort(-sb, axis=1)[:, :10]
    return float(np.mean([len(set(ka[i]) & set(kb[i])) / 10 for i in range(len(sa))]))


def structure_agreement(ref: np.ndarray, other: np.ndarray, n: int = 3000) -> dict:
    """How alike two vector spaces see the same texts (the spaces may differ in size)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    n = min(len(ref), n)

    def unit(x):
        x = x[:n].astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    a, b = unit(ref), unit(other)
    sa, sb = a @ a.T, b @ b.T
    upper = np.triu_indices(n, 1)
    pearson = float(np.corrcoef(sa[upper], sb[upper])[0, 1])
    overlap = knn10_overlap(sa, sb)
    la = KMeans(n_clusters=8, n_init=4, random_state=0).fit_predict(a)
    lb = KMeans(n_clusters=8, n_init=4, random_state=0).fit_predict(b)
    return {"similarity_pearson": pearson, "knn10_overlap": overlap,
            "kmeans8_ari": float(adjusted_rand_score(la, lb))}  # fmt: skip


class GpuBusy:
    """GPU utilisation while one GPU row runs. One `nvidia-smi -lms 100` process
    streams a sample every 100 ms for the GPU torch uses, named by UUID (nvidia-smi's
    own numbering ignores CUDA_VISIBLE_DEVICES). A sample covers the driver's last
    1/6 to 1 s, so a row is timed as one phase of at least --gpu-seconds, on its
    own (not interleaved with other rows), and the phase's first second is left out.
    Where the GPU reports no utilisation (a MIG slice: "[N/A]") the figure is '-'
    and `note` says why."""

    def __init__(self, device_index: int = 0):
        import torch

        uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
        uuid = str(uuid) if uuid is not None else None
        if uuid is None:
            self.gpu_id = str(device_index)
        else:  # torch gives the bare UUID; nvidia-smi names a GPU "GPU-<uuid>"
            self.gpu_id = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        self.note: str | None = None
        self.pct: dict[str, float | None] = {}

    @contextmanager
    def phase(self, key: str):
        import subprocess
        import threading

        samples: list[tuple[float, str]] = []
        try:
            proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 f"--id={self.gpu_id}", "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        except OSError as exc:
            self.note = f"nvidia-smi: {exc}"
            self.pct[key] = None
            yield
            return

        def read():
            for line in proc.stdout:
                samples.append((time.perf_counter(), line.strip()))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=5)
            reader.join(timeout=5)
        values = []
        for t, text in samples:
            try:
                value = float(text)
            except ValueError:
                self.note = f"nvidia-smi reports utilization {text!r} for {self.gpu_id}"
                continue
            if t >= t0 + 1.0:
                values.append(value)
        self.pct[key] = float(np.mean(values)) if values else None

    def mean(self, key: str) -> float | None:
        return self.pct.get(key)


def gpu_phase(fn, texts: list[str], min_seconds: float, busy: GpuBusy, key: str) -> dict:
    """One GPU row on its own: the whole text set, again and again, until at
    least min_seconds have passed (texts/s over all passes; vectors of the first)."""
    passes, first = 0, None
    with busy.phase(key):
        t = time.perf_counter()
        while True:
            v = fn(texts)
            passes += 1
            first = v if first is None else first
            elapsed = time.perf_counter() - t
            if elapsed >= min_seconds:
                break
    return {"seconds": elapsed / passes, "vectors": first, "passes": passes}


def interleaved(backends: dict, texts: list[str], chunks: int, rounds: int) -> dict[str, dict]:
    """Time each backend on the same chunks, taking turns; per-chunk best over rounds."""
    parts = np.array_split(np.arange(len(texts)), chunks)
    names = list(backends)
    best = {k: np.full(len(parts), np.inf) for k in names}
    vectors = {k: [None] * len(parts) for k in names}
    for r in range(rounds):
        for c, part in enumerate(parts):
            sub = [texts[i] for i in part]
            shift = (c + r) % len(names)
            for k in names[shift:] + names[:shift]:
                t = time.perf_counter()
                v = backends[k](sub)
                best[k][c] = min(best[k][c], time.perf_counter() - t)
                vectors[k][c] = v
            done = (r * len(parts) + c + 1) / (rounds * len(parts))
            print(f"\r  timing... {done:5.0%}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {k: {"seconds": float(best[k].sum()), "vectors": np.vstack(vectors[k])} for k in names}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1, help="repeat and keep each chunk's best time")
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: all available)"
    )
    ap.add_argument("--cache-dir", default=None, help="ONNX export cache (default: a temp dir)")
    ap.add_argument("--skip", default="", help="comma list: st,torch,onnx,int8,static,hashing,gpu")
    ap.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto",
        help="cpu: CPU rows only; cuda: GPU rows only (with GPU utilisation); auto: both",
    )  # fmt: skip
    ap.add_argument(
        "--gpu-seconds", type=float, default=10.0,
        help="each GPU row encodes the texts again and again for at least this long",
    )  # fmt: skip
    ap.add_argument("--static-dims", type=int, default=256, help="PCA dims of the static model")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    import torch

    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: torch sees no CUDA GPU on this machine")
        skip |= {"torch", "onnx", "int8", "static", "hashing"}
    elif args.device == "cpu":
        skip.add("gpu")
    gpu_rows = torch.cuda.is_available() and "gpu" not in skip
    root = Path.cwd()
    path = resolve_model_path(args.model, None, root)
    texts = shopper_stories(args.n)
    base = dict(
        name="bench", model=args.model, batch_size=args.batch_size, max_length=args.max_length
    )
    cache_dir = (
        Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="segtool-onnx-"))
    )

    from transformers import AutoTokenizer

    lens = np.array([len(x) for x in AutoTokenizer.from_pretrained(path)(texts)["input_ids"]])
    print(f"model: {args.model}\n  from {path}")
    print(
        f"texts: {len(texts)} shopper stories, tokens min/median/mean/max "
        f"{lens.min()}/{int(np.median(lens))}/{lens.mean():.0f}/{lens.max()}; "
        f"batch size {args.batch_size}"
    )

    backends: dict = {}
    setup: dict[str, float] = {}
    labels: dict[str, str] = {}
    baseline_of: dict[str, str] = {}

    def add(key, label, make, baseline="st"):
        t = time.perf_counter()
        fn = make()
        fn(texts[:8])  # load, export, warm up
        setup[key] = time.perf_counter() - t
        backends[key], labels[key], baseline_of[key] = fn, label, baseline

    threads = args.threads
    if "st" not in skip:
        from sentence_transformers import SentenceTransformer

        from segtool.encoders._common import quiet_transformers

        def make_st(device="cpu", dtype=None):
            with quiet_transformers():
                model = SentenceTransformer(path, device=device)
            model.max_seq_length = args.max_length
            if dtype is not None:
                model = model.to(dtype)
            return lambda t: model.encode(
                t, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False
            )

        if args.device != "cuda":  # minutes of CPU while the GPU idles
            add("st", "SentenceTransformer.encode (cpu fp32)", make_st)
    if threads:
        torch.set_num_threads(threads)

    def seg(**kw):
        enc = build_encoder(EncoderSpec(kind="transformers", **{**base, **kw}), root,
                            device_override=kw.get("device"), cache_dir=cache_dir, threads=threads)  # fmt: skip
        return enc.encode

    if "torch" not in skip:
        add("torch", "segtool transformers, torch fp32", lambda: seg(device="cpu", dtype="float32"))
    if "onnx" not in skip:
        add("onnx", "segtool transformers, onnx fp32", lambda: seg(backend="onnx", device="cpu"))
    if "int8" not in skip:
        add("int8", "segtool transformers, onnx int8", lambda: seg(backend="onnx", quantize="int8", device="cpu"))  # fmt: skip
    if "static" not in skip:

        def make_static():
            spec = EncoderSpec(name="s", kind="static", model=args.model, dim=args.static_dims)
            enc = build_encoder(spec, root)
            # distils once per machine (minutes for MiniLM), then reuses the cache
            enc.prepare(say=lambda m: print(f"  {m}", file=sys.stderr))
            return enc.encode

        add("static", f"segtool static (model2vec, dims {args.static_dims})", make_static)
    if "hashing" not in skip:

        def make_hashing():
            enc = build_encoder(EncoderSpec(name="h", kind="hashing", dim=512), root)
            return enc.encode

        add("hashing", "segtool hashing (dim 512)", make_hashing)
    cpu_rows = set(backends)  # timed interleaved; the GPU rows one phase each
    if gpu_rows:
        gpu = torch.cuda.get_device_name(0)
        if "st" not in skip:
            add("st_cuda", f"SentenceTransformer.encode ({gpu} fp16)", lambda: make_st("cuda", torch.float16), "st_cuda")  # fmt: skip
        ref = "st_cuda" if "st" not in skip else "st"
        add("cuda_fp16", f"segtool torch fp16 ({gpu})", lambda: seg(device="cuda", dtype="float16"), ref)  # fmt: skip
        if torch.cuda.is_bf16_supported():
            add("cuda_bf16", f"segtool torch bf16 ({gpu})", lambda: seg(device="cuda", dtype="bfloat16"), ref)  # fmt: skip

    print(f"timing {len(backends)} backends x {len(texts)} texts, {args.rounds} round(s), "
          f"{torch.get_num_threads()} torch threads ...")  # fmt: skip
    res = interleaved({k: backends[k] for k in cpu_rows}, texts, args.chunks, args.rounds)
    busy = GpuBusy() if gpu_rows else None
    for key in backends:
        if key not in cpu_rows:
            res[key] = gpu_phase(backends[key], texts, args.gpu_seconds, busy, key)
            print(f"  {labels[key]}: {res[key]['passes']} passes", file=sys.stderr)

    rows = []
    for key in backends:
        tps = len(texts) / res[key]["seconds"]
        ref = baseline_of[key]
        ratio = tps / (len(texts) / res[ref]["seconds"]) if ref in res else float("nan")
        rows.append({"key": key, "backend": labels[key], "texts_per_s": tps, "ratio": ratio,
                     "setup_s": setup[key],
                     "gpu_busy_pct": busy.mean(key) if busy else None})  # fmt: skip

    width = max(len(r["backend"]) for r in rows)
    print(
        f"\n{'backend':<{width}}  {'texts/s':>8}  {'vs encode':>9}  {'setup s':>7}  {'GPU busy':>8}"
    )
    print(f"{'-' * width}  {'-' * 8}  {'-' * 9}  {'-' * 7}  {'-' * 8}")
    for r in rows:
        ratio = f"{r['ratio']:8.2f}x" if r["ratio"] == r["ratio"] else f"{'-':>9}"
        gpu = f"{r['gpu_busy_pct']:7.0f}%" if r["gpu_busy_pct"] is not None else f"{'-':>8}"
        print(
            f"{r['backend']:<{width}}  {r['texts_per_s']:8.1f}  {ratio}  {r['setup_s']:7.1f}  {gpu}"
        )

    agreement = {}
    pairs = [("torch", "st"), ("onnx", "torch"), ("int8", "onnx"), ("int8", "torch"),
             ("cuda_fp16", "torch"), ("cuda_bf16", "torch"),
             ("cuda_fp16", "st_cuda"), ("cuda_bf16", "st_cuda")]  # fmt: skip
    for a, b in pairs:
        if a in res and b in res:
            c = cosine_rows(res[a]["vectors"], res[b]["vectors"])
            agreement[f"{a}_vs_{b}"] = {"mean": float(c.mean()), "min": float(c.min()),
                                        "p01": float(np.quantile(c, 0.01))}  # fmt: skip
    if busy is not None and busy.note:
        print(f"\nGPU busy: {busy.note}")
    if agreement:
        print("\ncosine agreement (same text, two backends)")
        for k, v in agreement.items():
            print(f"  {k:<16} mean {v['mean']:.5f}  1st pct {v['p01']:.5f}  min {v['min']:.5f}")

    downstream = {}
    if "int8" in res and "onnx" in res:
        downstream = int8_downstream(res["onnx"]["vectors"], res["int8"]["vectors"])
        print(
            "\nint8 vs fp32 downstream: "
            f"10-NN overlap {downstream['knn10_overlap']:.3f}, "
            f"k-means (k=8) same-assignment ARI {downstream['kmeans8_ari']:.3f}"
        )

    semantics = {}
    source = next((k for k in ("torch", "st", "onnx") if k in res), None)
    for key in ("static", "hashing"):
        if source and key in res:
            semantics[key] = structure_agreement(res[source]["vectors"], res[key]["vectors"])
    if semantics:
        print(f"\nagreement with the source model ({labels[source]}), same texts")
        print(
            f"  {'encoder':<8}  {'pairwise-cos r':>14}  {'10-NN overlap':>13}  {'k-means ARI':>11}"
        )
        for k, v in semantics.items():
            print(f"  {k:<8}  {v['similarity_pearson']:14.3f}  {v['knn10_overlap']:13.3f}"
                  f"  {v['kmeans8_ari']:11.3f}")  # fmt: skip

    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "n": len(texts), "batch_size": args.batch_size,
            "threads": torch.get_num_threads(), "rows": rows, "agreement": agreement,
            "int8_downstream": downstream, "semantics_vs_source": semantics,
        }, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
