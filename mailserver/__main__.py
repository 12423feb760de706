from mailserver.cli import main

raise SystemExit(main())
