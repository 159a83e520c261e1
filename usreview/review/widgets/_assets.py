"""The widgets' JavaScript and CSS, read from the package (nothing is fetched at run time)."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["css", "esm"]


def _read(name: str) -> str:
    return resources.files("usreview.review.widgets").joinpath("static", name).read_text("utf-8")


@cache
def esm(name: str) -> str:
    """The ES module of widget ``name``: the shared helpers followed by ``static/NAME.js``."""
    return _read("common.js") + "\n" + _read(f"{name}.js")


@cache
def css() -> str:
    """The stylesheet shared by every widget."""
    return _read("widgets.css")
