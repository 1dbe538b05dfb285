import sys

from infer_fast.cli import main

sys.exit(main())
