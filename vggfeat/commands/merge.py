"""``vggfeat merge``: join shard stores (one per process) into one store."""

from __future__ import annotations

import click

__all__ = ["merge"]


@click.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--copy",
    is_flag=True,
    help="Copy descriptors into OUT instead of mapping them as HDF5 virtual datasets.",
)
def merge(out: str, shards: tuple[str, ...], copy: bool) -> None:
    """Combine SHARDS (stores with equal settings) into OUT.

    By default OUT's descriptors are virtual datasets that point into the shards (no copy;
    keep the shards beside OUT). An id in several shards keeps its first ok occurrence; two
    shards holding one id from different image files are refused, and so are shards with
    parts an interrupted run left. OUT may be one of the SHARDS only with --copy
    (`vggfeat merge --copy all.h5 all.h5 new.h5` appends a shard).
    """
    from vggfeat.store import combine_stores

    store = combine_stores(out, shards, virtual=not copy)
    how = "copied" if copy else "mapped (virtual; keep the shards beside it)"
    click.echo(f"{len(store)} images from {len(shards)} shards in {out}, {how}")
