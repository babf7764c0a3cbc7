"""`python -m training …`: the same CLI as `ferlive …`."""
from training.cli import main

raise SystemExit(main())
