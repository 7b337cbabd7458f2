"""
Policies of :class:`~sb3_trpo_plus.TRPOPlus`: SB3's actor-critic policies, under the names
sb3-contrib's TRPO uses, so that saved models and zoo configurations carry over unchanged.
"""

from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, MultiInputActorCriticPolicy

MlpPolicy = ActorCriticPolicy
CnnPolicy = ActorCriticCnnPolicy
MultiInputPolicy = MultiInputActorCriticPolicy

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
