import sys

from manta.cli import main

sys.exit(main())
