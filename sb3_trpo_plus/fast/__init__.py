"""
The NumPy fast paths: the NumPy actor that evaluates a standard MLP policy during a rollout, the
fused MLP critic fit, and the one-thread BLAS limiter they run under. Each computes exactly what
the generic torch path computes, or declines (``from_policy`` returns ``None``) and the generic
path is used.
"""

from sb3_trpo_plus.fast.actor import NumpyActor
from sb3_trpo_plus.fast.blas import single_blas_thread
from sb3_trpo_plus.fast.critic import FusedMlpCritic
from sb3_trpo_plus.fast.plain import plain_modules

__all__ = ["FusedMlpCritic", "NumpyActor", "plain_modules", "single_blas_thread"]
