"""``python -m aumai_transactions.cli``: the same as the ``aumai-transactions`` script."""

from . import main

main()
