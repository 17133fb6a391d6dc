"""The command line's pieces: the `repair` subcommand, short help, config parts. Imported without torch."""
