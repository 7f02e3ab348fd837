"""Operator tools behind CLI verbs: signature verification, audit checks, rotation from the CLI."""
