"""``python -m finetune.report``."""

import sys

from finetune.report.command import main

sys.exit(main())
