import sys

from asyncbackup.cli import main

sys.exit(main())
