import sys

from cimsnap.cli import main

sys.exit(main())
