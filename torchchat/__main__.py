"""`python -m torchchat` and the //torchchat binary."""

import sys

from torchchat.cli import main

if __name__ == "__main__":
    sys.exit(main())
