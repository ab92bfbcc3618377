"""Experiments: typed configs, a resumable runner, a results database and reports."""
