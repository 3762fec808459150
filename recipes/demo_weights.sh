#!/usr/bin/env bash
# Retrain the demo net shipped as `--weights demo` (vggfeat/data/demo_vgg16.pth):
# a narrowed Net-D trained by `vggfeat train` on a seeded half of the Caltech-101 classes.
#
#   recipes/demo_weights.sh CALTECH_101_DIR [RUN_DIR]
#
# The run fits a 2-core CPU in about an hour: width 1/8 (convs 8..64 channels, fc6/fc7 512-d),
# 96-pixel crops of images rescaled to a smallest side jittered in [104, 128], batch 32.
# Two single-threaded torchrun processes (gloo) use the two cores better than one process with
# two threads when the machine is shared (OpenMP threads wait for each other). The final
# weights are stored in fp16 (4 MB); their accuracy as stored is recorded.
set -euo pipefail
caltech=${1:?usage: recipes/demo_weights.sh CALTECH_101_DIR [RUN_DIR]}
run=${2:-runs/demo}
here=$(cd "$(dirname "$0")" && pwd)
python "$here/demo_data.py" split "$caltech" "$run/data"
OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m vggfeat train \
    --train "$run/data/train.csv" --val "$run/data/val.csv" --root "$caltech" --out "$run" \
    --net D --width 0.125 --scale 104:128 --crop 96 --batch-size 32 --lr 0.01 \
    --init kaiming --epochs 24 --patience 2 --lr-drops 2 --workers 1 --checkpoint-every 20 \
    --final-dtype fp16 --seed 0 --quiet ${RESUME:+--resume}
cp "$run/final.pth" "$here/../vggfeat/data/demo_vgg16.pth"
cp "$run/data/source_classes.txt" "$run/data/target_classes.txt" "$here/../vggfeat/data/"
echo "demo weights -> vggfeat/data/demo_vgg16.pth"
