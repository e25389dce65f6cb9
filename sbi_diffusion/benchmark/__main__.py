"""``python -m sbi_diffusion.benchmark`` runs the command line."""

import sys

from sbi_diffusion.benchmark.cli import main

sys.exit(main())
