"""Allows ``python -m dpda`` (and ``torchrun -m dpda``) as well as the ``dpda`` script."""

from dpda.cli import main

raise SystemExit(main())
