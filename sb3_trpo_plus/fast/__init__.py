"""
The NumPy fast paths: the NumPy actor that evaluates a standard MLP policy during a rollout, the
fused MLP critic fit, and the one-thread BLAS limiter they run under. Each computes exactly what
the generic torch path computes, or declines (``from_policy`` returns ``None``) and the generic
path is used.

The public switch is TRPOPlus's constructor argument ``fast_paths`` (default ``True``, saved
with the model): ``TRPOPlus(..., fast_paths=False)`` never consults this package and runs the
generic torch paths only. Nothing here is switched by assigning module attributes.
"""

from sb3_trpo_plus.fast.actor import NumpyActor
from sb3_trpo_plus.fast.blas import single_blas_thread
from sb3_trpo_plus.fast.critic import FusedMlpCritic
from sb3_trpo_plus.fast.plain import plain_modules

__all__ = ["FusedMlpCritic", "NumpyActor", "plain_modules", "single_blas_thread"]
