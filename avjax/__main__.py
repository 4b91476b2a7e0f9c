"""`python -m avjax` is the same as the `avjax` console script."""

import sys

from avjax.cli import main

if __name__ == "__main__":
  sys.exit(main())
