"""``flowlet-eval``: one module per sub-command (``regions``, ``quality``, ``fidelity``, ``privacy``, ``tables``),
the pieces they share in :mod:`pipelines.eval.common` and the entry point in :mod:`pipelines.eval.cli`."""
