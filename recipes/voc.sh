#!/usr/bin/env bash
# PASCAL VOC as in the paper (Appendix B): Table 11 classification (voc2007, voc2012) and
# Table 12 action classification (voc2012-action, person box stacked with its image).
# A thin example around `vggfeat recipe run` (see `vggfeat recipe list` and README: Recipes):
# Net-D, Net-E and D&E; Q in {256, ..., 768} averaged; C by 3-fold CV; the table is printed
# beside the paper's, and VOC-2012 test images give evaluation-server files (comp2 / comp10).
#
# Usage: recipes/voc.sh voc2007|voc2012|voc2012-action VOC_ROOT [WORKDIR] [OPTIONS...]
#   VOC_ROOT is the year folder (VOCdevkit/VOC2007) holding JPEGImages/, Annotations/, ImageSets/.
#   OPTIONS go to `vggfeat recipe run`, e.g. --weights D=vgg16.pth --weights E=vgg19.pth.
set -euo pipefail
RECIPE=${1:?usage: voc.sh voc2007|voc2012|voc2012-action VOC_ROOT [WORKDIR] [OPTIONS...]}
ROOT=${2:?usage: voc.sh voc2007|voc2012|voc2012-action VOC_ROOT [WORKDIR] [OPTIONS...]}
WORKDIR=${3:-runs/$RECIPE}
shift $(( $# < 3 ? $# : 3 ))
exec vggfeat recipe run "$RECIPE" --root "$ROOT" --workdir "$WORKDIR" "$@"
