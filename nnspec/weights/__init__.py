"""Checkpoints of other programs: reading them safely (`checkpoint`), and converting between
their names and layouts and a spec's (`layout`)."""
