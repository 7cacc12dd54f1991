"""Run several ``catdog`` commands in one interpreter, stopping at the first failure (for torchrun in tests):

python -m torch.distributed.run --nproc-per-node 2 tests/catdog_commands.py '[["fit", ...], ["test", ...]]'
"""

import json
import sys

from catdog.cli import main

if __name__ == "__main__":
    for argv in json.loads(sys.argv[1]):
        status = main(argv)
        if status:
            sys.exit(status)
