"""
The theory of Schulman et al. 2015 as measured numbers on exact random finite MDPs (see
docs/theory.md): eta, V, Q, A and the discounted visitation by linear solves (:mod:`.mdp`), the
identity eq. (2), Theorem 1, Kakade and Langford's mixture bound and the package's surrogate
(:mod:`.checks`), the penalised and the constrained step (:mod:`.steps`), all run by
:mod:`.harness`. Run it with ``python -m benchmarks.tabular``.
"""
