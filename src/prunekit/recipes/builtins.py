"""Importing this module registers every built-in recipe."""

from prunekit.recipes.methods import data_prune, dst, gmp, prune_retrain, whole  # noqa: F401
from prunekit.recipes import frank_wolfe  # noqa: F401,E402
