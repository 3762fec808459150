"""``vggfeat evaluate``: top-1/top-5 error of trained nets (dense, multi-crop, fusion)."""

from __future__ import annotations

import click

from vggfeat.commands.options import device_option, scales_option

__all__ = ["evaluate", "format_errors"]

_MODES = ("dense", "multi-crop", "dense+multi-crop", "all")


def format_errors(rows: list[dict], scales: tuple[int, ...], flip: bool) -> str:
    """The error table: one row per (model, mode)."""
    from vggfeat.report import format_table

    body = [
        [r["model"], r["mode"], f"{100 * r['top1_error']:.2f}", f"{100 * r['top5_error']:.2f}"]
        for r in rows
    ]
    table = format_table(["model", "mode", "top-1 err %", "top-5 err %"], body)
    return f"{table}\n(Q = {','.join(map(str, scales))}, flips {'on' if flip else 'off'})"


@click.command()
@click.option(
    "--val",
    "val_path",
    required=True,
    type=click.Path(exists=True),
    help="Validation images: a folder with one sub-folder per class, or a CSV/TSV "
    "list of id,label rows.",
)
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False),
    help="Folder that CSV ids are relative to [default: the CSV's folder].",
)
@click.option(
    "--weights",
    "weights",
    multiple=True,
    required=True,
    help="A trained net: a vggfeat training checkpoint (RUN/final.pth), demo, a "
    "weights file, or imagenet. Repeat to evaluate several and their fusion.",
)
@click.option(
    "--net",
    default=None,
    help="Net of --weights imagenet/random or of state dicts that do not record it "
    "[default: as recorded, else D].",
)
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(_MODES),
    default=("dense",),
    show_default=True,
    help="dense, multi-crop, dense+multi-crop, or all; repeatable.",
)
@scales_option(default="256,384,512")
@click.option(
    "--crop",
    type=int,
    default=None,
    help="Multi-crop side [default: the net's training crop, 224 for the paper's].",
)
@click.option("--grid", default=5, show_default=True, help="Multi-crop grid per side (5: 5x5).")
@click.option(
    "--flip/--no-flip", default=True, show_default=True, help="Average with horizontal flips."
)
@device_option
@click.option(
    "--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True
)
@click.option("--workers", default=2, show_default=True, help="Decoding processes.")
@click.option("--seed", default=0, show_default=True, help="Seed for --weights random.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Also write the errors as JSON here.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def evaluate(
    val_path,
    root,
    weights,
    net,
    modes,
    scales,
    crop,
    grid,
    flip,
    device,
    precision,
    workers,
    seed,
    json_path,
    quiet,
) -> None:
    """Top-1 and top-5 classification error of trained nets, as in the paper's Tables 3-7.

    \b
    dense:            the fully-convolutional net on the whole image at each Q; the class
                      score map averaged spatially; softmax posteriors averaged over Q and flips
    multi-crop:       a 5x5 grid of crops x 2 flips per Q (150 crops for 3 scales)
    dense+multi-crop: the two posteriors averaged
    Several --weights: each model, and their fusion (posteriors averaged).

    \b
    Example:
      vggfeat evaluate --val ilsvrc/val --weights runD/final.pth --weights runE/final.pth \\
          --mode all --scales 256,384,512
    """
    from vggfeat.datasets.classes import read_labelled_images
    from vggfeat.evaluate import MODES, EvalConfig, evaluate_models
    from vggfeat.nets import canonical_net
    from vggfeat.report import write_json
    from vggfeat.weights import infer_net, load_weights

    chosen = MODES if "all" in modes else tuple(modes)
    config = EvalConfig(
        scales=scales,
        modes=chosen,
        crop=crop,
        grid=grid,
        flip=flip,
        device=device,
        precision=precision,
        workers=workers,
    )
    images = read_labelled_images(val_path, root)
    loaded = []
    for source in weights:
        if net is not None:
            name = canonical_net(net)
        elif source in ("imagenet", "random"):
            name = "D"
        else:
            name = infer_net(source)
        loaded.append(load_weights(source, name, seed=seed))
    for w in loaded:
        click.echo(f"net {w.net}: {w.label}, {w.num_classes} classes", err=True)
    result = evaluate_models(loaded, images, config, progress=not quiet)
    click.echo(format_errors(result.errors, config.scales, config.flip))
    click.echo(
        f"{len(result.ids)} images of {len(images.classes)} classes"
        + (f", {len(result.failed)} could not be decoded (left out)" if result.failed else "")
    )
    for id_, reason in result.failed[:5]:
        click.echo(f"  failed: {id_}: {reason}", err=True)
    if json_path:
        write_json(
            json_path,
            {
                "val": str(val_path),
                "n_images": len(result.ids),
                "classes": result.classes,
                "failed": [list(f) for f in result.failed],
                "scales": list(config.scales),
                "flip": config.flip,
                "grid": config.grid,
                "models": [w.provenance() for w in loaded],
                "errors": result.errors,
            },
        )
        click.echo(f"Wrote {json_path}.", err=True)
