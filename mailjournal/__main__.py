import sys

from mailjournal.cli import main

sys.exit(main())
