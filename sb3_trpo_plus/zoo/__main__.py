"""``python -m sb3_trpo_plus.zoo <command> [rl_zoo3 flags]``: same as ``trpo-plus-zoo``."""

from sb3_trpo_plus.zoo.cli import main

if __name__ == "__main__":
    main()
