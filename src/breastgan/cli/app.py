"""The typer application object; command modules attach themselves to it via ``register(app)``."""

import typer

from breastgan.cli.common import DEBUG_ENV, set_debug

app = typer.Typer(
    name="breastgan",
    help="Synthetic breast images you can trust: train GANs, generate, evaluate, share.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help=f"Show the full traceback of an error instead of one 'error:' line (or set {DEBUG_ENV}=1)."),
) -> None:
    """Synthetic breast images you can trust: train GANs, generate, evaluate, share."""
    set_debug(debug)
