from sketch2image.cli import main

raise SystemExit(main())
