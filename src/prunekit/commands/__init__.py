"""Command-line sub-commands, one module each (see prunekit.cli)."""
