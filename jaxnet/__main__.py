from jaxnet.cli import main

raise SystemExit(main())
