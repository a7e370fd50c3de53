"""``python -m vitsearch``: the same as the ``vitsearch`` command."""
import sys

from .cli import main

sys.exit(main())
