import sys

from motif_video.cli import main

sys.exit(main())
