"""`python -m diffusion_utils ...`: see `cli.py`."""

from diffusion_utils.cli import main

raise SystemExit(main())
