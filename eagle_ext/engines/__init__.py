"""Serving engines driven by eagle_ext (vLLM), each in its own process and environment.

A leaf package: it imports nothing else of eagle_ext, so data/ (regeneration, synthesis) and serve/
(evaluation) can both use it.
"""
