import sys

from floatify.cli import main

sys.exit(main())
