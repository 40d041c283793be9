"""``python -m spikeprune.search``: run or resume a search (``status`` shows a study)."""
import sys

from .cli import main

sys.exit(main())
