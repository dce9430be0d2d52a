"""Subcommands of ``calibseg``; one module each, discovered by :mod:`CalibSegLib.cli`."""
