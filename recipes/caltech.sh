#!/usr/bin/env bash
# Caltech-101 / Caltech-256 as in the paper's Table 11 (Appendix B), a thin example around
# `vggfeat recipe run` (see `vggfeat recipe list` and README: Recipes): Net-D, Net-E and D&E;
# Q in {256, 384, 512} stacked; 30 (Caltech-101, up to 50 test) or 60 (Caltech-256) training
# images per class; C on a 20% holdout; mean class recall over 3 random splits, written to
# WORKDIR/splits (repeat a run exactly with --splits WORKDIR/splits).
#
# Usage: recipes/caltech.sh caltech101|caltech256 CATEGORY_FOLDER [WORKDIR] [OPTIONS...]
#   CATEGORY_FOLDER holds one sub-folder per class (101_ObjectCategories, 256_ObjectCategories).
#   OPTIONS go to `vggfeat recipe run`, e.g. --weights demo, --scales 256, --device cuda.
set -euo pipefail
RECIPE=${1:?usage: caltech.sh caltech101|caltech256 CATEGORY_FOLDER [WORKDIR] [OPTIONS...]}
ROOT=${2:?usage: caltech.sh caltech101|caltech256 CATEGORY_FOLDER [WORKDIR] [OPTIONS...]}
WORKDIR=${3:-runs/$RECIPE}
shift $(( $# < 3 ? $# : 3 ))
exec vggfeat recipe run "$RECIPE" --root "$ROOT" --workdir "$WORKDIR" "$@"
