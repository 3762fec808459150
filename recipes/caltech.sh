#!/usr/bin/env bash
# Caltech-101 / Caltech-256 as in the paper's Table 11 (Appendix B):
#   Net-D, Net-E and D&E late fusion; Q in {256, 384, 512}, descriptors STACKED across scales;
#   Caltech-101: 30 training and up to 50 test images per class (background class kept);
#   Caltech-256: 60 training images per class, the rest for test;
#   C chosen on a 20% holdout of the training images; mean class recall over 3 random splits.
#
# Usage: recipes/caltech.sh caltech101|caltech256 CATEGORY_FOLDER [OUT_DIR]
#   CATEGORY_FOLDER holds one sub-folder per class (101_ObjectCategories, 256_ObjectCategories).
# Environment:
#   WEIGHTS_D, WEIGHTS_E  weights per net (default imagenet = torchvision's retrained models; the
#                         converted Oxford files reproduce the paper: see `vggfeat weights import`)
#   EXTRACT_ARGS          extra `vggfeat extract` options, e.g. "--device cuda --batch-size 16"
set -euo pipefail
PROTOCOL=${1:?usage: caltech.sh caltech101|caltech256 CATEGORY_FOLDER [OUT_DIR]}
ROOT=${2:?usage: caltech.sh caltech101|caltech256 CATEGORY_FOLDER [OUT_DIR]}
OUT=${3:-$PROTOCOL}
case $PROTOCOL in
  caltech101) SPLIT=30:50 ;;
  caltech256) SPLIT=60:all ;;
  *) echo "unknown protocol $PROTOCOL" >&2; exit 2 ;;
esac
HERE=$(cd "$(dirname "$0")" && pwd)
STORE=$OUT/$PROTOCOL.h5
mkdir -p "$OUT"

# Exit status 3 means some images failed; they are recorded and left out, so go on.
vggfeat extract --net D,E --weights "D=${WEIGHTS_D:-imagenet}" --weights "E=${WEIGHTS_E:-imagenet}" \
  --scales 256,384,512 --root "$ROOT" --out "$STORE" ${EXTRACT_ARGS:-} "$ROOT" || [ $? -eq 3 ]

for nets in D E D,E; do
  for seed in 0 1 2; do
    tag=${nets/,/}_split$seed
    vggfeat svm fit --features "$STORE" --nets "$nets" --scales 256,384,512 --aggregate stack \
      --labels "$ROOT" --train-split "caltech:$SPLIT:$seed" --Cs default --holdout 0.2 \
      --out "$OUT/model_$tag.h5" -q
    vggfeat svm eval --model "$OUT/model_$tag.h5" --features "$STORE" --labels "$ROOT" \
      --test-split "caltech:$SPLIT:$seed" --json "$OUT/results_$tag.json" --plots "$OUT/plots_$tag" -q
  done
done
python3 "$HERE/table11.py" "$PROTOCOL" "$OUT"/results_*.json
