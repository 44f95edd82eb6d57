"""Option parsing shared by commands (no heavy imports)."""

from __future__ import annotations

import typer

__all__ = ["parse_sizes"]


def parse_sizes(value: str | None, option: str) -> list[int] | None:
    """Parse ``"64,64"`` into ``[64, 64]``; a bad value is a usage error naming the option."""
    if value is None:
        return None
    try:
        sizes = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint=option) from None
    if not sizes or any(s <= 0 for s in sizes):
        raise typer.BadParameter(f"{value!r} must be positive integers like 64,64", param_hint=option)
    return sizes
