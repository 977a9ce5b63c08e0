from glmaas.cli import main

raise SystemExit(main())
