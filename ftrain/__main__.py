"""`python -m ftrain` is the `ftrain` command."""
import sys

from ftrain.cli import main

sys.exit(main())
