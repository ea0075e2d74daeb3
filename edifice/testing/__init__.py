"""Tools for testing generative models: small configurations of every family and an API fuzzer.

- :mod:`edifice.testing.cases`: ``CASES``, a fast configuration of every registered family, and helpers
  to build, perturb and sample them.
- :mod:`edifice.testing.fuzz`: run hypothesis-drawn calls of the public API and check that bad input is
  refused with a ``ValueError`` / ``TypeError`` naming the argument (needs ``hypothesis``).
"""
