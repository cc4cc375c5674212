"""One module per `grpolab` subcommand; each exposes `register(subparsers)`."""
