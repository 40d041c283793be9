"""``python -m spikeprune``: the same command as ``spikeprune``."""
import sys

from spikeprune.cli import main

sys.exit(main())
