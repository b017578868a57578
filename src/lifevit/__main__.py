import sys

from lifevit.cli import main

sys.exit(main())
