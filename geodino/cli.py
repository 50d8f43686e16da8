"""The ``geodino`` command."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the ``geodino`` command.

    Args:
        argv: command-line arguments without the program name (defaults to ``sys.argv[1:]``).

    Returns:
        the process exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.write("usage: geodino {fit,validate,test,predict,demo,demo-data,stats} ...\n")
    return 0
