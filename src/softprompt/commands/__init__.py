"""The command line's subcommands, one module per concern; softprompt.cli parses the
arguments, dispatches to them and turns errors and signals into exit statuses."""
