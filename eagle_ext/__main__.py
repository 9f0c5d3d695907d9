from eagle_ext.cli import main

raise SystemExit(main())
