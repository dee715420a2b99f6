"""Defaults of ``flowlet-eval`` (``configs/eval/default.yaml``)."""
