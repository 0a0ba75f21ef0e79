"""Benchmarks behind ``mondeq bench``: each module measures one thing and returns a result dict.

Run them all (writing ``docs/benchmarks.md``) with ``mondeq bench``, or one with
``python benchmarks/<name>.py``. ``--tiny`` runs every benchmark on a toy configuration in
seconds (what the smoke test does).
"""

BENCHMARKS = ["solvers", "resolvent", "training_step", "peers", "memory", "scaling", "data_parallel"]
