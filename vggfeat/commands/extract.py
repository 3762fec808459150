"""``vggfeat extract``: dense multi-scale descriptors of images into a feature store."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from vggfeat.commands.options import extraction_options, scales_option, split_csv

if TYPE_CHECKING:
    from vggfeat.weights import Weights

__all__ = ["extract", "load_requested_weights", "EXIT_SOME_FAILED"]

# Exit status when the run finished but some images could not be used (see `vggfeat info`).
EXIT_SOME_FAILED = 3


def _weights_by_net(values: tuple[str, ...], nets: list[str]) -> dict[str, str]:
    """'--weights SRC' applies to every net; '--weights D=SRC' to one."""
    from vggfeat.errors import VggfeatError
    from vggfeat.nets import canonical_net

    chosen = {net: "imagenet" for net in nets}
    for value in values:
        net, sep, source = value.partition("=")
        if sep and len(net) <= 6 and not net.startswith(("/", ".")):
            net = canonical_net(net)
            if net not in chosen:
                raise VggfeatError(
                    f"--weights {value} names net {net}, which --net does not ask for."
                )
            chosen[net] = source
        else:
            chosen = {n: value for n in nets}
    return chosen


def load_requested_weights(
    nets: Sequence[str] | str | None,
    weights: tuple[str, ...],
    default_nets: list[str],
    preprocess: str | None,
    seed: int,
    width: float,
) -> list[Weights]:
    """The weights of each net that --net/--nets and --weights ask for. Without --net, a single
    weights file (or demo) that holds one net (e.g. a training run's final.pth) gives that
    net alone, anything else ``default_nets``."""
    from vggfeat.nets import canonical_net
    from vggfeat.weights import infer_net, load_weights

    names = list(dict.fromkeys(canonical_net(n) for n in split_csv(nets)))
    if not names:
        single = weights[0] if len(weights) == 1 and "=" not in weights[0] else None
        file = single is not None and single not in ("imagenet", "random")
        names = [infer_net(single)] if file else list(default_nets)
    sources = _weights_by_net(weights, names)
    return [load_weights(sources[n], n, preprocess, seed=seed, width=width) for n in names]


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(exists=True))
@click.option(
    "--list",
    "list_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Text file of image paths, one per line (relative to --root).",
)
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False),
    help="Image ids are paths relative to this folder (default: each input folder).",
)
@click.option(
    "--net",
    "nets",
    multiple=True,
    help="Net-D (vgg16) and/or Net-E (vgg19): --net D --net E or --net D,E [default: the net "
    "a weights file records, else D].",
)
@click.option(
    "--weights",
    "weights",
    multiple=True,
    default=("imagenet",),
    show_default=True,
    help="imagenet (torchvision IMAGENET1K_V1), demo (the shipped demo net), random, or a "
    "weights file; NET=SOURCE sets one net's weights.",
)
@extraction_options
@scales_option()
@click.option(
    "--flip/--no-flip",
    default=True,
    show_default=True,
    help="Average with the horizontally flipped image.",
)
@click.option(
    "--layer",
    type=click.Choice(["fc7", "fc6", "pool5"]),
    default="fc7",
    show_default=True,
    help="Layer to pool (after ReLU).",
)
@click.option(
    "--decode",
    type=click.Choice(["cpu", "device"]),
    default="cpu",
    show_default=True,
    help="Where JPEGs are decoded and rescaled: cpu (PIL, in the workers) or device (nvJPEG "
    "on the GPU, when the CPU cannot keep up; recorded, not mixed with cpu stores).",
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the nets (GPU runs).")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Feature store (.h5); an existing one is resumed.",
)
@click.option(
    "--retry-failed/--no-retry-failed",
    default=True,
    show_default=True,
    help="Extract again the images that failed in earlier runs on this store.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Read and check the existing store first, and extract again the images of any "
    "damaged rows (done anyway whenever the store is rewritten).",
)
@click.option(
    "--content-hash",
    is_flag=True,
    help="Record each file's SHA-256 and find changed images by content, not by size and "
    "modification time (reads every file once more).",
)
@click.option("--width", default=1.0, hidden=True, help="Channel multiplier (tests only).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def extract(inputs, list_file, root, nets, weights, preprocess, seed, scales, flip, layer,
            batch_size, workers, device, precision, winograd, decode, compile_, max_side, out,
            checkpoint_every, retry_failed, verify, content_hash, width,
            quiet) -> None:  # fmt: skip
    """Extract flip-averaged fc7 descriptors of INPUTS (image files or folders) at each scale.

    \b
    Example:
      vggfeat extract --net E --scales 256,384,512 --root VOC2007/JPEGImages \\
          --out voc07_E.h5 VOC2007/JPEGImages

    An existing store is resumed: images it holds are kept unless their file changed or they
    failed before (retried unless --no-retry-failed). One process at a time may write a store;
    a second is refused.

    Under torchrun (`torchrun --nproc-per-node N -m vggfeat extract ...`) the images are
    shared out among the processes, each writes a shard, and rank 0 joins them into --out.

    Exit status: 0 when every image in the store worked, 3 when some failed (listed by
    `vggfeat info`; under torchrun 0, which torchrun would take for a crash), 1 on a usage,
    input or output error (one line, no traceback).
    """
    from vggfeat.datasets import ScanReport, find_images
    from vggfeat.distributed import current_rank, extract_distributed
    from vggfeat.extract import ExtractConfig
    from vggfeat.pipeline import extract_to_store
    from vggfeat.store import printable

    config = ExtractConfig(scales=scales, flip=flip, layer=layer, precision=precision,
                           device=device, batch_size=batch_size, workers=workers,
                           max_side=max_side, decode=decode, compile=compile_,
                           winograd=winograd)  # fmt: skip
    rank = current_rank()  # torchrun: shard, extract, and rank 0 joins the shards
    loaded = load_requested_weights(nets, weights, ["D"], preprocess, seed, width)
    scan = ScanReport()  # after the weights: a bad --weights is refused before a long scan
    samples = find_images(inputs, root=root, list_file=list_file, report=scan)
    if rank is None or rank.rank == 0:
        click.echo(scan.summary(), err=True)
    for w in loaded:
        click.echo(f"net {w.net}: {w.label}, {w.preprocess.name} preprocessing", err=True)
    run = extract_to_store if rank is None else extract_distributed
    result = run(samples, out, loaded, config, progress=not quiet,
                 rows_per_part=checkpoint_every, retry_failed=retry_failed,
                 content_hash=content_hash, verify=verify,
                 log=lambda line: click.echo(printable(line), err=True))  # fmt: skip
    if result is None:  # a torchrun rank other than 0: rank 0 reports for all
        return
    s = result.summary
    for notice in s.notices:
        click.echo(f"  notice: {notice}", err=True)
    click.echo(
        f"{s.done - len(s.failed)} images extracted, {len(s.failed)} failed, "
        f"{len(s.changed)} cropped, {result.skipped} already in store "
        f"({s.seconds:.1f} s, {s.images_per_second:.2f} img/s); "
        f"{len(result.store)} images in {out}"
    )
    for id_, reason in s.failed[:10]:
        click.echo(f"  failed: {printable(id_)}: {printable(reason)}", err=True)
    if len(s.failed) > 10:
        click.echo(f"  ... and {len(s.failed) - 10} more (see `vggfeat info {out}`)", err=True)
    for id_, note in s.changed[:5]:
        click.echo(f"  cropped: {printable(id_)}: {printable(note)}", err=True)
    failed_in_store = len(result.store.failed())
    if failed_in_store:
        if failed_in_store > len(s.failed):
            click.echo(f"{failed_in_store} images in the store failed (see `vggfeat info {out}`)")
        if rank is None:
            sys.exit(EXIT_SOME_FAILED)
