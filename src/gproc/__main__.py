import sys

from gproc.cli import main

sys.exit(main())
