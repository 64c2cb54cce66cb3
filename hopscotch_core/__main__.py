"""`python -m hopscotch_core ...` is the `hopscotch` command; torchrun starts it on N processes:

    torchrun --nproc-per-node 4 -m hopscotch_core run --model default --k 4 --mode paper
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
