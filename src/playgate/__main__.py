"""`python -m playgate` runs the command line."""

from playgate.cli import main

main()
