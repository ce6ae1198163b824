from detlab.cli import main

raise SystemExit(main())
