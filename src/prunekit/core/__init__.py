"""The spine every method shares: targets -> scores -> selection / allocation -> masks.

Also the pieces each of them leans on: pruning schedules, the one-call ``prune``, cost metrics,
the per-layer report, registries, errors, the device rule, and safe, atomic file I/O.
"""
