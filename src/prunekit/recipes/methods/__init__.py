"""One module per published method: its typed options, its stages, its registration and its
Python API function (re-exported as ``prunekit.recipes.<name>``)."""
