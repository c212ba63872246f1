"""``python -m gateway`` is the same as the ``ticketmx`` command."""
import sys

from .cli import main

sys.exit(main())
