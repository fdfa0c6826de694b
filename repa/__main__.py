import sys

from repa.cli import main

sys.exit(main())
