"""sb3-trpo-plus: the full Trust Region Policy Optimization of Schulman et al. (2015) for Stable-Baselines3."""

from sb3_trpo_plus.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_trpo_plus.trpo_plus import TRPOPlus

__version__ = "0.1.0"

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy", "TRPOPlus", "__version__"]
