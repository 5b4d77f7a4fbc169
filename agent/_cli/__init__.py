"""The ``shoal`` command line."""

from .main import REGISTRARS, Answered, build_parser, main

__all__ = ["REGISTRARS", "Answered", "build_parser", "main"]
