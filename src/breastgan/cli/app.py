"""The typer application object; command modules attach themselves to it via ``register(app)``."""

import typer

app = typer.Typer(
    name="breastgan",
    help="Synthetic breast images you can trust: train GANs, generate, evaluate, share.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
