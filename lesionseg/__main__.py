"""``python -m lesionseg`` is the same as the ``lesionseg`` command."""

from lesionseg.cli import main

raise SystemExit(main())
