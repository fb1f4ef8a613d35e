"""Operator command line: `python -m cli --help`."""
