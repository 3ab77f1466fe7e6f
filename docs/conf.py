"""Sphinx configuration for the sdpbx documentation."""

from __future__ import annotations

import sdpbx

project = "sdpbx"
author = "sdpbx developers"
copyright = "2026, sdpbx developers"
release = sdpbx.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"sdpbx {release}"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = False
myst_heading_anchors = 3
