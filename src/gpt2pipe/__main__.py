from gpt2pipe.cli.main import main

raise SystemExit(main())
