import sys

from xmcore.cli import main

sys.exit(main())
