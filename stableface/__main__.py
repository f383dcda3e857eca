from stableface.cli import main

raise SystemExit(main())
