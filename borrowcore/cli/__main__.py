import sys

from borrowcore.cli import main

sys.exit(main())
