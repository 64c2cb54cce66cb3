"""`python -m hopscotch_core.lm_eval_adapter ...`: lm-eval's command line with the "hopscotch" model registered.

This command is part of the interface (docs/method.md); the bridge itself is `integrations/lm_eval.py`, and
importing this name gives that module.
"""

import sys

from .integrations import lm_eval as _bridge

if __name__ == "__main__":
    _bridge.main()
else:
    sys.modules[__name__] = _bridge
