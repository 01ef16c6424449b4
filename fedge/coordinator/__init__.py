"""The coordinator: registers agents, assigns work, runs rounds, aggregates and reports."""
