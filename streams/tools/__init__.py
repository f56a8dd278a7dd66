"""Command-line tools: ``mta-feedback`` and its subcommands (replay, qualify, bench, stack,
demo)."""
