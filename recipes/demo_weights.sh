#!/usr/bin/env bash
# Retrain the demo net shipped as `--weights demo` (vggfeat/data/demo_vgg16.pth): a narrowed
# Net-D trained by `vggfeat train` on a seeded half of the Caltech-101 classes, the paper's way
# (Sect. 3.1): first Net-A, then Net-D initialised from it (first four convs, three FC layers).
#
#   recipes/demo_weights.sh CALTECH_101_DIR [RUN_DIR]
#
# Sized for a 2-core CPU in about an hour: width 1/8 (convs of 8..64 channels, fc6/fc7 of 512),
# 96-pixel crops of images whose smallest side is jittered in [104, 128], batch 32. He
# initialisation (--init kaiming) for the layers not copied: N(0, 1e-2) starves a net this
# narrow. A deep plain net (no batch norm) started from scratch stays at the class prior for
# many epochs on 2,736 images; Net-A leaves it within two, and Net-D from Net-A starts there.
# Two single-threaded torchrun processes (gloo) use two shared cores better than one process
# with two OpenMP threads, which wait for each other. The final weights are stored in fp16
# (4 MB); the validation error recorded with them is measured on the stored weights.
set -euo pipefail
caltech=${1:?usage: recipes/demo_weights.sh CALTECH_101_DIR [RUN_DIR]}
run=${2:-runs/demo}
here=$(cd "$(dirname "$0")" && pwd)
python "$here/demo_data.py" split "$caltech" "$run/data"
common=(--train "$run/data/train.csv" --val "$run/data/val.csv" --root "$caltech"
        --width 0.125 --scale 104:128 --crop 96 --batch-size 32 --lr 0.01 --init kaiming
        --patience 3 --lr-drops 1 --workers 1 --checkpoint-every 20 --seed 0 --quiet)
train() { OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m vggfeat train "$@"; }
train "${common[@]}" --net A --epochs 12 --out "$run/A" ${RESUME_A:+--resume}
train "${common[@]}" --net D --epochs 16 --init-from "$run/A/final.pth" --final-dtype fp16 \
    --out "$run/D" ${RESUME_D:+--resume}
cp "$run/D/final.pth" "$here/../vggfeat/data/demo_vgg16.pth"
cp "$run/data/source_classes.txt" "$run/data/target_classes.txt" "$here/../vggfeat/data/"
echo "demo weights -> vggfeat/data/demo_vgg16.pth"
