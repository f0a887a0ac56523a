"""One module per `samullm` subcommand; each defines `register(subparsers)`."""
