"""Importing this module registers every built-in recipe."""

from prunekit.recipes.methods import data_prune, dst, gmp, prune_retrain, sfw, whole  # noqa: F401
