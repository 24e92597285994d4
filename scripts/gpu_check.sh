#!/usr/bin/env bash
# The GPU checks of the embedding path, as one prepared command for a lent GPU
# machine (no network; device time is scarce): run scripts/gpu_kit.sh here
# first, then on the GPU machine, in the repository root, with .gpu carried:
#
#   bash scripts/gpu_check.sh
#
# 1. the `gpu` tests (tests/unit/test_encoders.py: fp16 against the CPU, many
#    batches in flight from a worker thread, cuda:1 when there is one);
# 2. benchmarks/embed.py --device cuda on a model of all-MiniLM-L6-v2's shape
#    with random weights (the kit carries its config and tokenizer; the time a
#    GPU takes does not depend on the weights' values): texts/s of
#    SentenceTransformer.encode and of segtool's fp16 and bf16 rows, and the
#    GPU's busy share while each runs.
# Logs and the JSON go to $OUT (the device tool brings them back), else to
# target/gpu_check. GPU_CHECK_DEVICE=cpu and GPU_CHECK_N=200 smoke-test the
# script itself on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-target/gpu_check}"
mkdir -p "$OUT"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
N="${GPU_CHECK_N:-20000}"
SECONDS_PER_ROW="${GPU_CHECK_SECONDS:-10}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/segtool-site .gpu/whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/segtool-site"
fi

{
  nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv || true
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'devices', torch.cuda.device_count()); print('transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"

# a model of MiniLM's shape: its config and tokenizer, random weights (fixed seed)
MODEL=/tmp/minilm-random
python3 - "$MODEL" <<'EOF' 2>&1 | tee "$OUT/model.txt"
import shutil, sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

src, dst = Path(".gpu/minilm-shape"), Path(sys.argv[1])
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst)
torch.manual_seed(0)
model = BertModel(BertConfig.from_pretrained(src), add_pooling_layer=False)
model.save_pretrained(dst)
print(f"{dst}: {sum(p.numel() for p in model.parameters()):,} parameters, random weights")
EOF

status=0
python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/unit/test_encoders.py 2>&1 \
  | tee "$OUT/gpu_tests.txt" || status=1

python3 benchmarks/embed.py --device "$DEVICE" --model "$MODEL" --n "$N" \
  --gpu-seconds "$SECONDS_PER_ROW" --skip onnx,int8,static --json "$OUT/embed_$DEVICE.json" 2>&1 \
  | tee "$OUT/embed_$DEVICE.txt" || status=1

echo "gpu_check: exit $status; logs in $OUT"
exit $status
