"""``python -m fastattn.bench [options]`` is ``fastattn bench [options]``."""

import sys

from .._cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
