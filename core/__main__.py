"""``python -m chatcore``: the same as the ``chatcore`` command."""

from chatcore.cli import main

raise SystemExit(main())
