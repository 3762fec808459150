#!/usr/bin/env bash
# PASCAL VOC-2007 / VOC-2012 classification as in the paper's Table 11 (Appendix B):
#   Net-D, Net-E and D&E late fusion; Q in {256, 384, 512, 640, 768}, descriptors AVERAGED across
#   scales; SVMs trained on trainval with C chosen per class by 3-fold cross-validation; difficult
#   images ignored. VOC-2007 is scored on test with the devkit's 11-point AP. VOC-2012 test labels
#   are private (evaluation server), so voc2012 trains on train and scores val with area AP.
#
# Usage: recipes/voc.sh voc2007|voc2012 VOC_ROOT [OUT_DIR]
#   VOC_ROOT holds JPEGImages/ and ImageSets/Main/ (e.g. VOCdevkit/VOC2007).
# Environment: WEIGHTS_D, WEIGHTS_E, EXTRACT_ARGS as in caltech.sh.
set -euo pipefail
PROTOCOL=${1:?usage: voc.sh voc2007|voc2012 VOC_ROOT [OUT_DIR]}
VOC=${2:?usage: voc.sh voc2007|voc2012 VOC_ROOT [OUT_DIR]}
OUT=${3:-$PROTOCOL}
case $PROTOCOL in
  voc2007) TRAIN=trainval; TEST=test; AP=11point ;;
  voc2012) TRAIN=train; TEST=val; AP=area ;;
  *) echo "unknown protocol $PROTOCOL" >&2; exit 2 ;;
esac
HERE=$(cd "$(dirname "$0")" && pwd)
STORE=$OUT/$PROTOCOL.h5
mkdir -p "$OUT"

vggfeat extract --net D,E --weights "D=${WEIGHTS_D:-imagenet}" --weights "E=${WEIGHTS_E:-imagenet}" \
  --scales 256,384,512,640,768 --root "$VOC/JPEGImages" --out "$STORE" ${EXTRACT_ARGS:-} \
  "$VOC/JPEGImages" || [ $? -eq 3 ]

for nets in D E D,E; do
  tag=${nets/,/}
  vggfeat svm fit --features "$STORE" --nets "$nets" --aggregate average \
    --labels "$VOC/ImageSets/Main" --train-split "$TRAIN" --Cs default --cv 3 \
    --out "$OUT/model_$tag.h5" -q
  vggfeat svm eval --model "$OUT/model_$tag.h5" --features "$STORE" --labels "$VOC/ImageSets/Main" \
    --test-split "$TEST" --ap "$AP" --json "$OUT/results_$tag.json" --plots "$OUT/plots_$tag" -q
done
python3 "$HERE/table11.py" "$PROTOCOL" "$OUT"/results_*.json
