import sys

from meshrtc.cli import main

sys.exit(main())
