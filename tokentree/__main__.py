from tokentree.cli import main

raise SystemExit(main())
