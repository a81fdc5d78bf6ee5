"""Entry point: ``python -m training --task TASK.json --workdir DIR``."""

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(int(main()))
