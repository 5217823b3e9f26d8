"""The server's HTML pages (the station dashboard's, the listen page): Jinja templates
under ``static/`` that extend one layout (``layout.html``: the doctype, charset and
viewport every page has), so a page file holds only its title, its own head and its body.

Every ``{{NAME}}`` is filled with the value HTML-escaped (autoescape), and a name the page
uses but the caller does not give is an error, not an empty string.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

STATIC_DIR = Path(__file__).with_name("static")

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(STATIC_DIR),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    # The block tags sit on lines of their own: they leave no blank line behind.
    trim_blocks=True,
    keep_trailing_newline=True,
)


def render(name: str, **values: str) -> str:
    """The page ``name`` (a path under :data:`STATIC_DIR`) with its placeholders filled."""
    return _ENV.get_template(name).render(**values)
