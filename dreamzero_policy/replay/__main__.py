import sys

from dreamzero_policy.replay.cli import main

sys.exit(main())
