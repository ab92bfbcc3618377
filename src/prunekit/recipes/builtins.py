"""Importing this module registers every built-in recipe."""

from prunekit.recipes.methods import at_init, data_prune, dst, gmp, prune_retrain, sap, soups  # noqa: F401
