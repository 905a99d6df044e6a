from motif_video_lab.cli import main

raise SystemExit(main())
