"""Placeholder: subcommands are added here."""


def add_commands(sub) -> None:
    return None
