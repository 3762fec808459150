"""``vggfeat train``: train a Table 1 net as in Sect. 3.1 (also under torchrun: one per GPU)."""

from __future__ import annotations

import click

from vggfeat.commands.options import device_option

__all__ = ["train", "parse_scale_range"]


def parse_scale_range(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    """Click callback: '256' -> (256, 256); '256:512' -> (256, 512) (scale jittering)."""
    parts = value.split(":")
    try:
        smin, smax = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
    except ValueError:
        smin, smax = 0, -1
    if not 0 < smin <= smax:
        raise click.BadParameter(f"{value!r}: give S (e.g. 256) or Smin:Smax (e.g. 256:512).")
    return smin, smax


@click.command()
@click.option(
    "--train",
    "train_path",
    required=True,
    type=click.Path(exists=True),
    help="Training images: a folder with one sub-folder per class, or a CSV/TSV list "
    "of id,label rows (ids relative to --root).",
)
@click.option(
    "--val",
    "val_path",
    required=True,
    type=click.Path(exists=True),
    help="Validation images, as --train; its classes must be training classes.",
)
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False),
    help="Folder that CSV ids are relative to [default: the CSV's folder].",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: checkpoint.pth, final.pth, log.json, curve.png.",
)
@click.option(
    "--net",
    default="D",
    show_default=True,
    help="Table 1 config: A, A-LRN, B, C, D (vgg16), E (vgg19).",
)
@click.option(
    "--width",
    default=1.0,
    show_default=True,
    type=float,
    help="Channel multiplier of convs and fc6/fc7 (small nets for small data).",
)
@click.option(
    "--scale",
    default="256",
    show_default=True,
    callback=parse_scale_range,
    help="Training scale: fixed S (256) or jittered per image in Smin:Smax (256:512).",
)
@click.option("--crop", default=224, show_default=True, help="Random square crop side.")
@click.option(
    "--batch-size",
    default=256,
    show_default=True,
    help="Global batch (over processes and accumulated micro-batches).",
)
@click.option(
    "--accumulate",
    default=1,
    show_default=True,
    help="Micro-batches per step (gradient accumulation), when a device cannot hold the batch.",
)
@click.option("--lr", default=1e-2, show_default=True, help="Initial learning rate.")
@click.option("--momentum", default=0.9, show_default=True)
@click.option("--weight-decay", default=5e-4, show_default=True)
@click.option(
    "--decay-biases/--no-decay-biases",
    default=False,
    show_default=True,
    help="Apply weight decay to biases too.",
)
@click.option("--dropout", default=0.5, show_default=True, help="Dropout ratio of fc6 and fc7.")
@click.option(
    "--lr-drops",
    default=3,
    show_default=True,
    help="Times the LR is divided by 10 on a validation plateau; the next plateau stops.",
)
@click.option(
    "--patience",
    default=1,
    show_default=True,
    help="Epochs without a better val accuracy that make a plateau.",
)
@click.option("--epochs", default=74, show_default=True, help="The most epochs.")
@click.option(
    "--max-steps",
    type=int,
    default=None,
    help="Stop after this many steps in all (resume later with --resume).",
)
@click.option(
    "--init",
    type=click.Choice(["auto", "normal", "glorot", "kaiming"]),
    default="auto",
    show_default=True,
    help="normal: N(0, 1e-2) (the paper's Net-A); glorot; kaiming (torchvision's); "
    "auto: normal for A or with --init-from, else glorot.",
)
@click.option(
    "--init-from",
    type=click.Path(exists=True, dir_okay=False),
    help="Trained checkpoint (e.g. Net-A's final.pth) whose first four conv layers and "
    "three FC layers initialise this net.",
)
@click.option(
    "--colour-shift",
    default=0.1,
    show_default=True,
    help="Std of AlexNet's PCA colour shift (0: off).",
)
@click.option("--flip/--no-flip", default=True, show_default=True, help="Random horizontal flips.")
@click.option(
    "--preprocess",
    type=click.Choice(["torchvision", "caffe"]),
    default="torchvision",
    show_default=True,
    help="Input normalisation, recorded in the checkpoint.",
)
@click.option("--seed", default=0, show_default=True)
@device_option
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="Autocast precision.",
)
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--workers", default=2, show_default=True, help="Decoding processes per process.")
@click.option(
    "--checkpoint-every",
    default=0,
    show_default=True,
    help="Also checkpoint every N steps (0: at the end of each epoch only).",
)
@click.option(
    "--final-dtype",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Storage of final.pth's weights (fp16: half the size; the "
    "final validation is rerun on the stored weights).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def train(
    train_path,
    val_path,
    root,
    out,
    net,
    width,
    scale,
    crop,
    batch_size,
    accumulate,
    lr,
    momentum,
    weight_decay,
    decay_biases,
    dropout,
    lr_drops,
    patience,
    epochs,
    max_steps,
    init,
    init_from,
    colour_shift,
    flip,
    preprocess,
    seed,
    device,
    precision,
    channels_last,
    workers,
    checkpoint_every,
    final_dtype,
    resume,
    quiet,
) -> None:
    """Train a VGG net (Table 1) as in Sect. 3.1 of the paper.

    SGD with momentum, weight decay and dropout; the learning rate is divided by 10 when the
    validation accuracy stops improving. Training images are rescaled to a fixed or jittered
    smallest side S, randomly cropped, flipped and colour-shifted. Checkpoints are written
    atomically at each epoch end (and every --checkpoint-every steps); --resume continues a
    killed run to the same result. The run's final.pth works directly as
    `vggfeat extract --weights RUN/final.pth`.

    \b
    Example (the paper's Net-A, then Net-D from it, multi-scale training):
      vggfeat train --net A --train ilsvrc/train --val ilsvrc/val --scale 256:512 --out runA
      vggfeat train --net D --init-from runA/final.pth --train ilsvrc/train \\
          --val ilsvrc/val --scale 256:512 --out runD
    Several GPUs (one process each; the global batch stays --batch-size):
      torchrun --nproc-per-node 8 -m vggfeat train --net D ...
    """
    from vggfeat.datasets.classes import read_labelled_images
    from vggfeat.train import TrainConfig, Trainer

    config = TrainConfig(
        net=net,
        width=width,
        scale=scale,
        crop=crop,
        batch_size=batch_size,
        accumulate=accumulate,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        decay_biases=decay_biases,
        dropout=dropout,
        lr_drops=lr_drops,
        patience=patience,
        epochs=epochs,
        max_steps=max_steps,
        init=init,
        init_from=init_from,
        colour_shift=colour_shift,
        flip=flip,
        preprocess=preprocess,
        seed=seed,
        precision=precision,
        device=device,
        channels_last=channels_last,
        workers=workers,
        checkpoint_every=checkpoint_every,
        final_dtype=final_dtype,
    )
    train_set = read_labelled_images(train_path, root)
    val_set = read_labelled_images(val_path, root)
    trainer = Trainer(
        config, train_set, val_set, out, resume=resume, progress=not quiet, echo=click.echo
    )
    if trainer.dist.main:
        c = trainer.config
        click.echo(
            f"Net-{c.net} width {c.width:g}: {len(train_set)} training images of "
            f"{len(train_set.classes)} classes, {len(trainer.val_set)} val; batch {c.batch_size} "
            f"({trainer.dist.world} process(es) x {c.accumulate} x {trainer.micro_batch}), "
            f"{trainer.steps_per_epoch} steps/epoch; init {c.resolved_init}; "
            f"device {trainer.device}"
            + (
                f"; resuming at epoch {trainer.state.epoch + 1}, step {trainer.state.global_step}"
                if resume
                else ""
            ),
            err=True,
        )
    result = trainer.fit()
    if trainer.dist.main and result.finished:
        click.echo(
            f"Wrote {result.final} (use: vggfeat extract --weights {result.final} "
            f"--net {config.net} ...), log {out}/log.json, curve {out}/curve.png"
        )
