"""The ``vggfeat`` command: a thin click group; each subcommand lives in ``vggfeat/commands/``.

Subcommand modules are imported only when used and keep torch/h5py imports inside their
functions, so ``vggfeat --help`` stays instant.
"""

from __future__ import annotations

import importlib
import sys

import click

__all__ = ["cli", "main"]

_COMMANDS = {
    "demo": "vggfeat.commands.demo:demo",
    "evaluate": "vggfeat.commands.evaluate:evaluate",
    "extract": "vggfeat.commands.extract:extract",
    "info": "vggfeat.commands.info:info",
    "merge": "vggfeat.commands.merge:merge",
    "svm": "vggfeat.commands.svm:svm",
    "train": "vggfeat.commands.train:train",
    "weights": "vggfeat.commands.weights:weights",
}


class LazyGroup(click.Group):
    """Resolves subcommands on demand and turns library errors into one-line messages."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attr = _COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        from vggfeat.errors import VggfeatError

        try:
            return super().invoke(ctx)
        except VggfeatError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vggfeat")
def cli() -> None:
    """Paper-exact VGG descriptors (Simonyan & Zisserman 2014) and linear-SVM transfer."""


def main() -> None:
    cli(prog_name="vggfeat")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
