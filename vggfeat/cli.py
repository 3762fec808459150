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
    "recipe": "vggfeat.commands.recipe:recipe",
    "svm": "vggfeat.commands.svm:svm",
    "train": "vggfeat.commands.train:train",
    "weights": "vggfeat.commands.weights:weights",
}


def _one_line(exc: click.UsageError) -> click.ClickException:
    """A usage error (missing or bad option, conflicting options) as every user error is
    reported: one line naming the problem and where to look, exit status 1."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        exc.exit_code = 1  # the help itself is the most useful answer to a bare command
        return exc
    message = " ".join(exc.format_message().split())
    if exc.ctx is not None:
        message += f" (see '{exc.ctx.command_path} --help')"
    return click.ClickException(message)


class LazyGroup(click.Group):
    """Resolves subcommands on demand and turns library and usage errors into one-line
    messages with exit status 1 (see README, exit statuses)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attr = _COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context):
        from vggfeat.errors import VggfeatError

        try:
            return super().invoke(ctx)
        except VggfeatError as exc:
            # A path may hold undecodable file-name bytes: print them escaped, never crash.
            message = (
                str(exc).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            )
            raise click.ClickException(message) from None
        except click.UsageError as exc:  # a subcommand's (or sub-group's) own usage errors
            raise _one_line(exc) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vggfeat")
def cli() -> None:
    """Paper-exact VGG descriptors (Simonyan & Zisserman 2014) and linear-SVM transfer."""


def main() -> None:
    cli(prog_name="vggfeat")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
