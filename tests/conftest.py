"""Suite-wide settings.

The command line turns on JAX's persistent compilation cache by default
(``artifex_rl.recipes.compile_cache``); the suite runs without it, so no test
depends on what an earlier run left in ``~/.cache`` (the cache's own test
gives it a temporary directory).
"""

import os

os.environ.setdefault("ARTIFEX_RL_COMPILE_CACHE", "off")
