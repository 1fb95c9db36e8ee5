"""`python -m embedlab`: the same command as the `embedlab` script."""

from embedlab.cli import app

app(prog_name="embedlab")
