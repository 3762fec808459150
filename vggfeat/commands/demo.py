"""``vggfeat demo``: the main job end to end on the embedded default (trained net, real photos)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from vggfeat.commands.options import scales_option

__all__ = ["demo"]

DEFAULT_SCALES = "256,384"


def _tag(weights: str) -> str:
    """A file-name part for the weights, so runs with other weights keep their own files."""
    name = weights if weights in ("demo", "imagenet", "random") else Path(weights).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _describe_demo_net() -> str:
    from vggfeat.weights import read_checkpoint

    _, meta = read_checkpoint("demo")
    record = meta["training"]
    final = record.get("final_val", {})
    return (
        f"demo net: Net-D (vgg16) at width {meta['width']:g}, trained by `vggfeat train` on "
        f"{record['data']['n_train']} images of {len(meta['classes'])} other Caltech-101 classes "
        f"(val top-1 error {100 * final.get('val_top1_error', float('nan')):.1f}% there); "
        "`vggfeat weights info demo` shows its record"
    )


@click.command()
@click.option(
    "--out-dir",
    default="vggfeat-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the labels, store, model, results and plots.",
)
@click.option(
    "--weights",
    default="demo",
    show_default=True,
    help="Net-D weights: demo (the trained demo net), imagenet (when in the torch hub "
    "cache), random (same narrow net, untrained) or a weights file.",
)
@click.option(
    "--per-class",
    type=click.IntRange(min=2),
    default=None,
    help="Use only the first N images of each class [default: all 40].",
)
@scales_option(default=DEFAULT_SCALES)
@click.option("--seed", default=0, show_default=True, help="Seed of --weights random.")
@click.option(
    "--width",
    type=float,
    default=None,
    hidden=True,
    help="Channel multiplier of --weights random [default: the demo net's].",
)
@click.option("--workers", default=1, show_default=True, help="Decoding processes.")
@click.pass_context
def demo(
    ctx: click.Context,
    out_dir: str,
    weights: str,
    per_class: int | None,
    scales: tuple[int, ...],
    seed: int,
    width: float | None,
    workers: int,
) -> None:
    """Transfer learning end to end on the embedded default: real Caltech-101 photos of 8
    classes that the shipped demo net never saw (40 each). Extracts dense multi-scale Net-D fc7
    descriptors with flips, fits one-vs-rest linear SVMs (C per class by 3-fold
    cross-validation) on half of the images, and evaluates on the other half: per-class
    recall, mean class recall, results.json and a confusion plot.

    Compare with `--weights random` (the same net untrained) or `--weights imagenet`.
    """
    from vggfeat.commands.extract import extract
    from vggfeat.commands.svm import evaluate, fit
    from vggfeat.demo import ATTRIBUTION, DEMO_IMAGES, demo_classes, demo_images, write_demo_labels
    from vggfeat.weights import read_checkpoint

    out = Path(out_dir)
    classes = demo_classes()
    labels = out / "labels.csv"
    n_train, n_test = write_demo_labels(labels, per_class)
    click.echo(
        f"{n_train + n_test} photos of {len(classes)} classes ({', '.join(classes)}): "
        f"{n_train} to train the SVMs, {n_test} to test. {ATTRIBUTION}."
    )
    if weights == "demo":
        click.echo(_describe_demo_net())
    elif weights == "random" and width is None:
        _, meta = read_checkpoint("demo")
        width = float(meta["width"])
        click.echo(f"RANDOM weights: the demo net's architecture (width {width:g}), untrained")
    tag = _tag(weights)
    suffix = f"{tag}_Q{'-'.join(map(str, scales))}"
    store, model = out / f"features_{suffix}.h5", out / f"svm_{suffix}.h5"
    files = tuple(str(path) for _, path in demo_images(per_class))
    common = dict(features=(str(store),), labels_path=str(labels))
    ctx.invoke(
        extract,
        inputs=files,
        root=str(DEMO_IMAGES),
        nets=("D",),
        weights=(weights,),
        scales=scales,
        out=str(store),
        width=width or 1.0,
        seed=seed,
        workers=workers,
        quiet=False,
    )
    ctx.invoke(fit, **common, train_split="train", cs="default", cv=3, out=str(model))
    results, plots = out / f"results_{suffix}.json", out / f"plots_{suffix}"
    ctx.invoke(
        evaluate,
        **common,
        model=str(model),
        test_split="test",
        json_path=str(results),
        plots=str(plots),
    )
    click.echo(f"store {store}, model {model}, results {results}, plots {plots}")
