"""Importing this module registers every built-in recipe."""

from prunekit.recipes.methods import (  # noqa: F401
    at_init,
    data_prune,
    dst,
    gmp,
    prune_retrain,
    sap,
    sfw,
    soups,
)
