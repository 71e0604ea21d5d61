"""The `citybrain` command: one console script whose subcommands live beside their components."""
